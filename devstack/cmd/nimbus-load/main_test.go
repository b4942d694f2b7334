package main

import (
	"context"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"
)

func testConfig(url string) config {
	cfg, err := parseFlags([]string{"-url", url, "-rate", "100", "-duration", "1s", "-warmup", "0s", "-timeout", "2s"})
	if err != nil {
		panic(err)
	}
	return cfg
}

func TestFixedRateAgainstAHealthyServer(t *testing.T) {
	var got atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost || r.Header.Get("Content-Type") != "application/json" {
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		got.Add(1)
		w.Write([]byte(`{"prediction": 0}`))
	}))
	defer srv.Close()
	cfg := testConfig(srv.URL)
	start := time.Now()
	rep, err := run(context.Background(), cfg, srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	// Open loop: 100 requests spread over the second, not sent at once.
	if took := time.Since(start); took < 900*time.Millisecond || took > 5*time.Second {
		t.Errorf("took %s for 1 s at 100 req/s", took)
	}
	if rep.Sent != 100 || rep.OK != 100 || rep.Errors != 0 || got.Load() != 100 || !rep.Passed {
		t.Errorf("report %+v, server saw %d", rep, got.Load())
	}
	if rep.LatencyMS["p50"] <= 0 || rep.LatencyMS["p50"] > rep.LatencyMS["max"] {
		t.Errorf("latencies %v", rep.LatencyMS)
	}
}

func TestErrorsFailTheRun(t *testing.T) {
	var n atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if n.Add(1)%10 == 0 {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
	}))
	defer srv.Close()
	rep, err := run(context.Background(), testConfig(srv.URL), srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Passed || rep.ErrorKinds["HTTP 503"] != 10 || rep.OK != 90 {
		t.Errorf("report %+v", rep)
	}
}

func TestASlowServerIsNotHiddenByTheGenerator(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(300 * time.Millisecond)
	}))
	defer srv.Close()
	cfg := testConfig(srv.URL)
	cfg.maxInFlight = 5 // 100 req/s x 0.3 s needs ~30 open: most cannot leave
	rep, _ := run(context.Background(), cfg, srv.URL)
	if rep.Passed || rep.ErrorKinds["max in flight"] == 0 {
		t.Errorf("report %+v", rep)
	}
}

func TestPercentile(t *testing.T) {
	var d []time.Duration
	for i := 1; i <= 100; i++ {
		d = append(d, time.Duration(i)*time.Millisecond)
	}
	for p, want := range map[float64]float64{50: 50, 99: 99, 100: 100, 0.1: 1} {
		if got := percentile(d, p); got != want {
			t.Errorf("p%v = %v, want %v", p, got, want)
		}
	}
}

func TestFlags(t *testing.T) {
	t.Setenv("NIMBUS_URL", "")
	for _, args := range [][]string{{}, {"-url", "http://x", "-stack", "nimbus"}, {"-url", "http://x", "-rate", "0"}} {
		if _, err := parseFlags(args); err == nil {
			t.Errorf("%v accepted", args)
		}
	}
}
