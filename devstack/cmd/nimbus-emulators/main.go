// Command nimbus-emulators serves the local stand-ins for Google Cloud that the
// Nimbus dev stack needs, in one process:
//
//   - Pub/Sub: Google's own fake, cloud.google.com/go/pubsub/v2/pstest, as a
//     gRPC server (point PUBSUB_EMULATOR_HOST at it), with Seek replay, retry
//     backoff and dead-lettering fixed in front of it (pubsub.go);
//   - Cloud Storage: github.com/fsouza/fake-gcs-server/fakestorage over plain
//     HTTP (point STORAGE_EMULATOR_HOST at it), optionally persisted on disk.
//
// It prints one line to stderr once both are listening and exits 0 on SIGINT
// or SIGTERM.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/fsouza/fake-gcs-server/fakestorage"
)

// config is everything the flags decide.
type config struct {
	host       string
	pubsubPort int
	gcsPort    int
	gcsRoot    string // empty: in memory
	buckets    []string
	verbose    bool // log every GCS request to stderr
}

// bucketList is a repeatable, comma-separated flag value.
type bucketList []string

func (b *bucketList) String() string { return strings.Join(*b, ",") }

func (b *bucketList) Set(v string) error {
	for _, name := range strings.Split(v, ",") {
		if name = strings.TrimSpace(name); name != "" {
			*b = append(*b, name)
		}
	}
	return nil
}

// Same rule fake-gcs-server applies to buckets created through its API.
var bucketName = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]*[a-z0-9]$`)

// emulators is the running pair.
type emulators struct {
	pubsub  *pubsubFront
	gcs     *fakestorage.Server
	httpSrv *http.Server

	PubsubAddr string // host:port, the value for PUBSUB_EMULATOR_HOST
	GCSURL     string // http://host:port, the value for STORAGE_EMULATOR_HOST

	serveErr chan error // the GCS HTTP server stopped on its own
}

// start brings both emulators up; on return both are listening. A port of 0
// picks a free one (the chosen addresses are in PubsubAddr and GCSURL).
func start(cfg config) (*emulators, error) {
	for _, b := range cfg.buckets {
		if !bucketName.MatchString(b) {
			return nil, fmt.Errorf("invalid bucket name %q: use lowercase letters, digits, '-', '_' and '.'", b)
		}
	}
	if cfg.gcsRoot != "" {
		if err := os.MkdirAll(cfg.gcsRoot, 0o755); err != nil {
			return nil, fmt.Errorf("gcs root: %w", err)
		}
	}

	// GCS first: we own its listener, so a busy port is a plain error.
	gcsLn, err := net.Listen("tcp", net.JoinHostPort(cfg.host, strconv.Itoa(cfg.gcsPort)))
	if err != nil {
		return nil, fmt.Errorf("gcs listen: %w", err)
	}
	gcsHostPort := gcsLn.Addr().String()
	if cfg.gcsPort != 0 {
		// Keep the host exactly as given (e.g. "localhost"), so URLs the
		// server builds match what clients were told.
		gcsHostPort = net.JoinHostPort(cfg.host, strconv.Itoa(cfg.gcsPort))
	}
	gcsURL := "http://" + gcsHostPort

	var gcsLog io.Writer
	if cfg.verbose {
		gcsLog = os.Stderr
	}
	gcs, err := fakestorage.NewServerWithOptions(fakestorage.Options{
		Scheme:      "http",
		Host:        cfg.host,
		Port:        uint16(gcsLn.Addr().(*net.TCPAddr).Port),
		PublicHost:  gcsHostPort,
		ExternalURL: gcsURL,
		StorageRoot: cfg.gcsRoot,
		NoListener:  true, // we serve its handler on our own listener
		Writer:      gcsLog,
	})
	if err != nil {
		gcsLn.Close()
		return nil, fmt.Errorf("gcs: %w", err)
	}
	for _, b := range cfg.buckets {
		if err := ensureBucket(gcs, b); err != nil {
			gcs.Stop()
			gcsLn.Close()
			return nil, err
		}
	}

	ps, err := newPubsubFront(net.JoinHostPort(cfg.host, strconv.Itoa(cfg.pubsubPort)))
	if err != nil {
		gcs.Stop()
		gcsLn.Close()
		return nil, err
	}

	e := &emulators{
		pubsub:     ps,
		gcs:        gcs,
		PubsubAddr: ps.Addr,
		GCSURL:     gcsURL,
		serveErr:   make(chan error, 1),
		httpSrv: &http.Server{
			Handler:           gcs.HTTPHandler(),
			ReadHeaderTimeout: 30 * time.Second,
			ErrorLog:          log.New(io.Discard, "", 0),
		},
	}
	if cfg.pubsubPort != 0 {
		e.PubsubAddr = net.JoinHostPort(cfg.host, strconv.Itoa(cfg.pubsubPort))
	}
	go func() {
		if err := e.httpSrv.Serve(gcsLn); err != nil && !errors.Is(err, http.ErrServerClosed) {
			e.serveErr <- err
		}
	}()
	return e, nil
}

// ensureBucket creates the bucket unless it already exists (with --gcs-root
// it may be left from an earlier run; re-creating would reset its metadata).
func ensureBucket(s *fakestorage.Server, name string) (err error) {
	if _, err := s.Backend().GetBucket(name); err == nil {
		return nil
	}
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("create bucket %q: %v", name, r)
		}
	}()
	s.CreateBucketWithOpts(fakestorage.CreateBucketOpts{Name: name})
	return nil
}

// Close stops both, letting in-flight GCS requests finish until ctx ends.
func (e *emulators) Close(ctx context.Context) error {
	err := e.httpSrv.Shutdown(ctx)
	if err != nil {
		e.httpSrv.Close()
	}
	e.gcs.Stop()
	e.pubsub.Close()
	return err
}

func parseFlags(args []string) (config, error) {
	var cfg config
	var buckets bucketList
	fs := flag.NewFlagSet("nimbus-emulators", flag.ContinueOnError)
	fs.StringVar(&cfg.host, "host", "127.0.0.1", "address both emulators listen on")
	fs.IntVar(&cfg.pubsubPort, "pubsub-port", 8085, "Pub/Sub (gRPC) port; PUBSUB_EMULATOR_HOST=<host>:<port>")
	fs.IntVar(&cfg.gcsPort, "gcs-port", 4443, "Cloud Storage (HTTP) port; STORAGE_EMULATOR_HOST=http://<host>:<port>")
	fs.StringVar(&cfg.gcsRoot, "gcs-root", "", "directory that persists buckets and objects (empty: in memory)")
	fs.Var(&buckets, "bucket", "bucket to create at start if missing (repeatable or comma-separated)")
	fs.BoolVar(&cfg.verbose, "verbose", false, "log every Cloud Storage request to stderr")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: nimbus-emulators [flags]\n\nServes the Pub/Sub fake (pstest) and a Cloud Storage fake (fake-gcs-server).\n\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return cfg, err
	}
	if fs.NArg() > 0 {
		return cfg, fmt.Errorf("unexpected arguments: %v", fs.Args())
	}
	for _, p := range []int{cfg.pubsubPort, cfg.gcsPort} {
		if p < 0 || p > 65535 {
			return cfg, fmt.Errorf("port %d out of range", p)
		}
	}
	cfg.buckets = buckets
	return cfg, nil
}

func main() {
	log.SetFlags(0)
	log.SetPrefix("nimbus-emulators: ")

	cfg, err := parseFlags(os.Args[1:])
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	}
	if err != nil {
		log.Print(err)
		os.Exit(2)
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	e, err := start(cfg)
	if err != nil {
		log.Print(err)
		os.Exit(1)
	}
	log.Printf("pubsub on %s, gcs on %s", e.PubsubAddr, e.GCSURL)

	code := 0
	select {
	case <-ctx.Done():
	case err := <-e.serveErr:
		log.Printf("gcs server stopped: %v", err)
		code = 1
	}
	stop()

	shutdownCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = e.Close(shutdownCtx)
	os.Exit(code)
}
