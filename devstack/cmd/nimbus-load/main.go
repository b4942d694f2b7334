// Command nimbus-load sends requests at a fixed rate (an open loop: each
// request leaves at its scheduled time whether or not earlier ones have been
// answered) and reports the rate achieved, latency percentiles and errors.
//
//	nimbus-load -url http://127.0.0.1:8080 -rate 200 -duration 30s
//	nimbus-load -stack .venv/bin/nimbus -rate 200 -duration 30s   # starts its own stack
//
// Latency is measured from each request's scheduled time, so a server that
// stalls is not hidden by the generator waiting for it (no coordinated
// omission). It exits 1 when any request fails (non-2xx, transport error,
// timeout, or one that could not leave because -max-in-flight were open) or
// the achieved rate is below -min-rate-ratio of the target.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"os"
	"os/signal"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

const irisRow = `{"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}`

type config struct {
	url          string
	stack        string // the nimbus CLI: start a stack of our own with `nimbus up`
	method       string
	path         string
	body         string
	rate         float64
	duration     time.Duration
	warmup       time.Duration
	timeout      time.Duration
	maxInFlight  int
	apiKey       string
	minRateRatio float64
	jsonOut      string
	stackTimeout time.Duration
}

func parseFlags(args []string) (config, error) {
	var c config
	fs := flag.NewFlagSet("nimbus-load", flag.ContinueOnError)
	fs.StringVar(&c.url, "url", os.Getenv("NIMBUS_URL"), "base URL of a running stack's gateway (or NIMBUS_URL)")
	fs.StringVar(&c.stack, "stack", "", "path of the nimbus CLI: start a stack of our own on free ports (`nimbus up`), stop it after")
	fs.StringVar(&c.method, "method", http.MethodPost, "HTTP method")
	fs.StringVar(&c.path, "path", "/v1/predict", "path (and query) to request")
	fs.StringVar(&c.body, "body", irisRow, "request body (JSON); @FILE reads a file")
	fs.Float64Var(&c.rate, "rate", 200, "requests per second")
	fs.DurationVar(&c.duration, "duration", 30*time.Second, "how long to send at -rate")
	fs.DurationVar(&c.warmup, "warmup", 3*time.Second, "send at -rate this long first, not counted")
	fs.DurationVar(&c.timeout, "timeout", 10*time.Second, "per-request timeout (counted as an error)")
	fs.IntVar(&c.maxInFlight, "max-in-flight", 1000, "requests open at once; a request that would exceed it fails")
	fs.StringVar(&c.apiKey, "api-key", os.Getenv("NIMBUS_API_KEY"), "API key, sent as X-API-Key (or NIMBUS_API_KEY)")
	fs.Float64Var(&c.minRateRatio, "min-rate-ratio", 0.95, "fail when the achieved rate is below this share of -rate")
	fs.StringVar(&c.jsonOut, "json", "", "also write the report as JSON to this file")
	fs.DurationVar(&c.stackTimeout, "stack-timeout", 4*time.Minute, "how long a -stack may take to be ready")
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	if fs.NArg() > 0 {
		return c, fmt.Errorf("unexpected arguments: %v", fs.Args())
	}
	if (c.url == "") == (c.stack == "") {
		return c, errors.New("give one of -url (a running stack) or -stack (the nimbus CLI, to start one)")
	}
	if c.rate <= 0 || c.duration <= 0 || c.maxInFlight <= 0 {
		return c, errors.New("-rate, -duration and -max-in-flight must be positive")
	}
	if strings.HasPrefix(c.body, "@") {
		b, err := os.ReadFile(c.body[1:])
		if err != nil {
			return c, err
		}
		c.body = string(b)
	}
	return c, nil
}

// report is what a run measured.
type report struct {
	URL         string             `json:"url"`
	Method      string             `json:"method"`
	TargetRate  float64            `json:"target_rate"`
	Duration    float64            `json:"duration_s"`
	Sent        int                `json:"sent"`
	OK          int                `json:"ok"`
	Errors      int                `json:"errors"`
	ErrorKinds  map[string]int     `json:"error_kinds"`
	AchievedRPS float64            `json:"achieved_rps"`
	LatencyMS   map[string]float64 `json:"latency_ms"`
	MaxInFlight int64              `json:"max_in_flight"`
	Passed      bool               `json:"passed"`
}

type sample struct {
	latency time.Duration
	kind    string // "" for a 2xx
}

type runner struct {
	cfg      config
	client   *http.Client
	target   string
	inFlight atomic.Int64
	peak     atomic.Int64
}

func newRunner(cfg config, base string) *runner {
	tr := &http.Transport{
		Proxy:               nil,
		DialContext:         (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConns:        cfg.maxInFlight,
		MaxIdleConnsPerHost: cfg.maxInFlight,
		IdleConnTimeout:     30 * time.Second,
		DisableCompression:  true,
	}
	return &runner{
		cfg:    cfg,
		client: &http.Client{Transport: tr, Timeout: cfg.timeout},
		target: strings.TrimRight(base, "/") + cfg.path,
	}
}

func (r *runner) one(ctx context.Context) sample {
	var body io.Reader
	if r.cfg.body != "" && r.cfg.method != http.MethodGet {
		body = strings.NewReader(r.cfg.body)
	}
	req, err := http.NewRequestWithContext(ctx, r.cfg.method, r.target, body)
	if err != nil {
		return sample{kind: "request: " + err.Error()}
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if r.cfg.apiKey != "" {
		req.Header.Set("X-API-Key", r.cfg.apiKey)
	}
	resp, err := r.client.Do(req)
	if err != nil {
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			return sample{kind: "timeout"}
		}
		return sample{kind: "transport"}
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return sample{kind: "HTTP " + strconv.Itoa(resp.StatusCode)}
	}
	return sample{}
}

// phase sends at the configured rate for d; it returns the samples once every
// request it sent has finished.
func (r *runner) phase(ctx context.Context, d time.Duration) ([]sample, int) {
	interval := time.Duration(float64(time.Second) / r.cfg.rate)
	n := int(math.Round(d.Seconds() * r.cfg.rate))
	samples := make([]sample, n)
	var wg sync.WaitGroup
	start := time.Now()
	sent := 0
	for i := 0; i < n; i++ {
		due := start.Add(time.Duration(i) * interval)
		if wait := time.Until(due); wait > 0 {
			select {
			case <-ctx.Done():
				wg.Wait()
				return samples[:sent], sent
			case <-time.After(wait):
			}
		}
		sent++
		if r.inFlight.Load() >= int64(r.cfg.maxInFlight) {
			samples[i] = sample{kind: "max in flight"}
			continue
		}
		cur := r.inFlight.Add(1)
		for {
			peak := r.peak.Load()
			if cur <= peak || r.peak.CompareAndSwap(peak, cur) {
				break
			}
		}
		wg.Add(1)
		go func(i int, due time.Time) {
			defer wg.Done()
			defer r.inFlight.Add(-1)
			s := r.one(ctx)
			s.latency = time.Since(due)
			samples[i] = s
		}(i, due)
	}
	wg.Wait()
	return samples, sent
}

func percentile(sorted []time.Duration, p float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	i := int(math.Ceil(p/100*float64(len(sorted)))) - 1
	i = max(0, min(i, len(sorted)-1))
	return float64(sorted[i].Microseconds()) / 1000
}

func summarize(cfg config, base string, samples []sample, sent int, elapsed time.Duration, peak int64) report {
	rep := report{URL: base + cfg.path, Method: cfg.method, TargetRate: cfg.rate, Duration: elapsed.Seconds(),
		Sent: sent, ErrorKinds: map[string]int{}, MaxInFlight: peak}
	var lat []time.Duration
	for _, s := range samples {
		if s.kind != "" {
			rep.Errors++
			rep.ErrorKinds[s.kind]++
			continue
		}
		rep.OK++
		lat = append(lat, s.latency)
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	rep.AchievedRPS = float64(rep.OK) / elapsed.Seconds()
	rep.LatencyMS = map[string]float64{
		"p50": percentile(lat, 50), "p90": percentile(lat, 90), "p99": percentile(lat, 99),
		"p99.9": percentile(lat, 99.9), "max": percentile(lat, 100),
	}
	rep.Passed = rep.Errors == 0 && rep.AchievedRPS >= cfg.minRateRatio*cfg.rate
	return rep
}

func (rep report) text() string {
	var b strings.Builder
	fmt.Fprintf(&b, "nimbus-load: %s %s at %.0f req/s for %.1fs (open loop)\n", rep.Method, rep.URL, rep.TargetRate, rep.Duration)
	fmt.Fprintf(&b, "  sent %d, ok %d, errors %d", rep.Sent, rep.OK, rep.Errors)
	if rep.Errors > 0 {
		kinds := make([]string, 0, len(rep.ErrorKinds))
		for k, v := range rep.ErrorKinds {
			kinds = append(kinds, fmt.Sprintf("%s: %d", k, v))
		}
		sort.Strings(kinds)
		fmt.Fprintf(&b, " (%s)", strings.Join(kinds, ", "))
	}
	fmt.Fprintf(&b, "\n  achieved %.1f req/s; at most %d in flight\n", rep.AchievedRPS, rep.MaxInFlight)
	l := rep.LatencyMS
	fmt.Fprintf(&b, "  latency ms (from each request's scheduled time): p50 %.2f  p90 %.2f  p99 %.2f  p99.9 %.2f  max %.2f\n",
		l["p50"], l["p90"], l["p99"], l["p99.9"], l["max"])
	if rep.Passed {
		b.WriteString("  PASS: zero errors at the target rate\n")
	} else {
		b.WriteString("  FAIL: errors, or the rate was not reached\n")
	}
	return b.String()
}

func run(ctx context.Context, cfg config, base string) (report, error) {
	r := newRunner(cfg, base)
	if cfg.warmup > 0 {
		r.phase(ctx, cfg.warmup)
		r.peak.Store(0)
	}
	if ctx.Err() != nil {
		return report{}, ctx.Err()
	}
	start := time.Now()
	samples, sent := r.phase(ctx, cfg.duration)
	elapsed := time.Since(start)
	// The rate is over the sending window: the last answers' tail is latency, not rate.
	window := max(cfg.duration, time.Duration(float64(time.Second)*float64(sent)/cfg.rate))
	if ctx.Err() != nil {
		window = elapsed
	}
	return summarize(cfg, base, samples, sent, window, r.peak.Load()), ctx.Err()
}

func main() {
	cfg, err := parseFlags(os.Args[1:])
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "nimbus-load:", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	base := cfg.url
	if cfg.stack != "" {
		st, err := startStack(ctx, cfg.stack, cfg.stackTimeout)
		if err != nil {
			fmt.Fprintln(os.Stderr, "nimbus-load:", err)
			os.Exit(1)
		}
		defer st.stop()
		base = st.url
	}
	rep, err := run(ctx, cfg, base)
	if err != nil {
		fmt.Fprintln(os.Stderr, "nimbus-load: interrupted:", err)
	}
	fmt.Print(rep.text())
	if cfg.jsonOut != "" {
		var buf bytes.Buffer
		enc := json.NewEncoder(&buf)
		enc.SetIndent("", "  ")
		_ = enc.Encode(rep)
		if werr := os.WriteFile(cfg.jsonOut, buf.Bytes(), 0o644); werr != nil {
			fmt.Fprintln(os.Stderr, "nimbus-load:", werr)
		}
	}
	if !rep.Passed || err != nil {
		exit(1)
	}
}

// exit runs the deferred stack stop first (os.Exit skips defers).
var exit = func(code int) {
	if current != nil {
		current.stop()
	}
	os.Exit(code)
}
