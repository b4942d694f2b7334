package main

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"time"
)

// stack is a `nimbus up` of our own: free ports, its state in a temporary
// folder, stopped (its whole process group) when the run ends.
type stack struct {
	url  string
	home string
	cmd  *exec.Cmd
	once sync.Once
}

var current *stack

// portSettings are the stack's listening ports, each set to a free one.
var portSettings = []string{
	"NIMBUS_PORT", "NIMBUS_PREDICT_PORT", "NIMBUS_BATCH_SUBMIT_PORT", "NIMBUS_BATCH_STATUS_PORT",
	"NIMBUS_MLFLOW_PORT", "NIMBUS_REDIS_PORT", "NIMBUS_PUBSUB_PORT", "NIMBUS_GCS_PORT",
}

func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

func startStack(ctx context.Context, nimbus string, timeout time.Duration) (*stack, error) {
	home, err := os.MkdirTemp("", "nimbus-load-")
	if err != nil {
		return nil, err
	}
	env := append(os.Environ(), "NIMBUS_HOME="+home)
	var gateway int
	for _, name := range portSettings {
		p, err := freePort()
		if err != nil {
			return nil, err
		}
		if name == "NIMBUS_PORT" {
			gateway = p
		}
		env = append(env, fmt.Sprintf("%s=%d", name, p))
	}
	logPath := filepath.Join(home, "nimbus-up.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	defer logFile.Close()
	cmd := exec.Command(nimbus, "up")
	cmd.Env = env
	cmd.Stdout, cmd.Stderr = logFile, logFile
	// Its own process group, killed with us if we die (Pdeathsig).
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s up: %w", nimbus, err)
	}
	st := &stack{url: fmt.Sprintf("http://127.0.0.1:%d", gateway), home: home, cmd: cmd}
	current = st
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	fmt.Fprintf(os.Stderr, "nimbus-load: starting a stack of its own (%s up, log %s)\n", nimbus, logPath)
	deadline := time.Now().Add(timeout)
	client := &http.Client{Timeout: 5 * time.Second}
	for {
		select {
		case err := <-exited:
			st.cmd = nil
			return nil, fmt.Errorf("nimbus up exited (%v) before the stack was ready; its log:\n%s", err, tail(logPath))
		case <-ctx.Done():
			st.stop()
			return nil, ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
		if resp, err := client.Get(st.url + "/ready"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return st, nil
			}
		}
		if time.Now().After(deadline) {
			st.stop()
			return nil, fmt.Errorf("the stack was not ready after %s; its log:\n%s", timeout, tail(logPath))
		}
	}
}

// stop SIGTERMs the stack's process group (nimbus up stops its services),
// then SIGKILLs what is left after 30 s, and removes its folder.
func (s *stack) stop() {
	s.once.Do(func() {
		if s.cmd != nil && s.cmd.Process != nil {
			pgid := s.cmd.Process.Pid
			_ = syscall.Kill(-pgid, syscall.SIGTERM)
			deadline := time.Now().Add(30 * time.Second)
			for time.Now().Before(deadline) && syscall.Kill(-pgid, 0) == nil {
				time.Sleep(200 * time.Millisecond)
			}
			_ = syscall.Kill(-pgid, syscall.SIGKILL)
		}
		_ = os.RemoveAll(s.home)
	})
}

func tail(path string) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	var lines []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		lines = append(lines, sc.Text())
		if len(lines) > 20 {
			lines = lines[1:]
		}
	}
	out := ""
	for _, l := range lines {
		out += l + "\n"
	}
	return out
}
