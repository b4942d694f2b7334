package main

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
)

// seen is what an echo upstream reports about the request it got.
type seen struct {
	Upstream    string `json:"upstream"`
	Method      string `json:"method"`
	Path        string `json:"path"`
	RawPath     string `json:"raw_path"`
	RawQuery    string `json:"raw_query"`
	Body        string `json:"body"`
	Host        string `json:"host"`
	XFF         string `json:"xff"`
	XFHost      string `json:"xfhost"`
	XFProto     string `json:"xfproto"`
	Traceparent string `json:"traceparent"`
	CloudTrace  string `json:"cloud_trace"`
}

// echoUpstream answers every request with what it saw, and GET /ready with
// readyStatus.
func echoUpstream(t *testing.T, name string, readyStatus int) *httptest.Server {
	t.Helper()
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		if r.URL.Path == "/ready" {
			w.WriteHeader(readyStatus)
			_ = json.NewEncoder(w).Encode(map[string]any{"component": name, "ok": readyStatus == 200})
			return
		}
		body, _ := io.ReadAll(r.Body)
		w.Header().Set("X-Upstream", name)
		w.WriteHeader(http.StatusAccepted)
		_ = json.NewEncoder(w).Encode(seen{
			Upstream: name, Method: r.Method, Path: r.URL.Path, RawPath: r.URL.EscapedPath(),
			RawQuery: r.URL.RawQuery, Body: string(body), Host: r.Host,
			XFF: r.Header.Get("X-Forwarded-For"), XFHost: r.Header.Get("X-Forwarded-Host"),
			XFProto: r.Header.Get("X-Forwarded-Proto"), Traceparent: r.Header.Get("traceparent"),
			CloudTrace: r.Header.Get("X-Cloud-Trace-Context"),
		})
	}))
	t.Cleanup(s.Close)
	return s
}

// deadURL is a base URL nothing listens on.
func deadURL(t *testing.T) string {
	t.Helper()
	s := httptest.NewServer(http.NotFoundHandler())
	u := s.URL
	s.Close()
	return u
}

// syncBuffer is a goroutine-safe log sink.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// startGateway serves a gateway (with access log) in front of the given
// upstream base URLs.
func startGateway(t *testing.T, predict, submit, status string, tweak ...func(*config)) (*httptest.Server, *syncBuffer) {
	t.Helper()
	cfg := defaultConfig()
	cfg.upstreams = map[string]string{"predict": predict, "batch_submit": submit, "batch_status": status}
	for _, f := range tweak {
		f(&cfg)
	}
	logs := &syncBuffer{}
	g, err := newGateway(cfg, newJSONLogger(logs))
	if err != nil {
		t.Fatal(err)
	}
	s := httptest.NewServer(g.withAccessLog(g))
	t.Cleanup(func() {
		s.Close()
		g.transport.CloseIdleConnections()
	})
	return s, logs
}

func threeUpstreams(t *testing.T) (*httptest.Server, *syncBuffer) {
	p := echoUpstream(t, "predict", 200)
	sub := echoUpstream(t, "batch_submit", 200)
	st := echoUpstream(t, "batch_status", 200)
	return startGateway(t, p.URL, sub.URL, st.URL)
}

func do(t *testing.T, method, url, body string, hdr map[string]string) *http.Response {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, url, rd)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	return resp
}

func decode[T any](t *testing.T, resp *http.Response) T {
	t.Helper()
	var v T
	b, _ := io.ReadAll(resp.Body)
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatalf("body %q is not JSON: %v", b, err)
	}
	return v
}

type errorBody struct {
	Error struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	} `json:"error"`
}

// checkError asserts the project's error shape with the given status and code.
func checkError(t *testing.T, resp *http.Response, status int, code string) errorBody {
	t.Helper()
	if resp.StatusCode != status {
		t.Errorf("status %d, want %d", resp.StatusCode, status)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type %q, want application/json", ct)
	}
	var raw map[string]map[string]any
	b, _ := io.ReadAll(resp.Body)
	if err := json.Unmarshal(b, &raw); err != nil || len(raw) != 1 || len(raw["error"]) != 2 {
		t.Fatalf("body %s is not exactly {\"error\": {\"code\", \"message\"}} (%v)", b, err)
	}
	var e errorBody
	_ = json.Unmarshal(b, &e)
	if e.Error.Code != code || e.Error.Message == "" {
		t.Errorf("error %+v, want code %q and a message", e.Error, code)
	}
	return e
}

func TestRoutesReachTheRightUpstream(t *testing.T) {
	gw, _ := threeUpstreams(t)
	cases := []struct {
		method, path, body string
		upstream           string
		wantPath, wantRaw  string
		wantQuery          string
	}{
		{"GET", "/", "", "predict", "/", "/", ""},
		{"GET", "/?probe=1", "", "predict", "/", "/", "probe=1"},
		{"HEAD", "/", "", "predict", "", "", ""},
		{"POST", "/v1/predict", `{"features": [5.1, 3.5, 1.4, 0.2]}`, "predict", "/v1/predict", "/v1/predict", ""},
		{"POST", "/v1/predict?explain=true&x=a%20b&x=c", `{}`, "predict", "/v1/predict", "/v1/predict", "explain=true&x=a%20b&x=c"},
		{"POST", "/v1/batch", `{"items": []}`, "batch_submit", "/v1/batch", "/v1/batch", ""},
		{"POST", "/v1/batch?priority=low", `{"items": []}`, "batch_submit", "/v1/batch", "/v1/batch", "priority=low"},
		{"GET", "/v1/batch?limit=20", "", "batch_status", "/v1/batch", "/v1/batch", "limit=20"},
		{"GET", "/v1/batch/6f1c2b9e-8a3e-4e2b-9d1e-0c4f5a6b7c8d", "", "batch_status",
			"/v1/batch/6f1c2b9e-8a3e-4e2b-9d1e-0c4f5a6b7c8d", "/v1/batch/6f1c2b9e-8a3e-4e2b-9d1e-0c4f5a6b7c8d", ""},
		{"GET", "/v1/batch/abc?wait=5&fields=status,result", "", "batch_status", "/v1/batch/abc", "/v1/batch/abc", "wait=5&fields=status,result"},
		{"GET", "/v1/batch/a%2Fb", "", "batch_status", "/v1/batch/a/b", "/v1/batch/a%2Fb", ""},
		{"DELETE", "/v1/batch/6f1c2b9e-8a3e-4e2b-9d1e-0c4f5a6b7c8d", "", "batch_submit",
			"/v1/batch/6f1c2b9e-8a3e-4e2b-9d1e-0c4f5a6b7c8d", "/v1/batch/6f1c2b9e-8a3e-4e2b-9d1e-0c4f5a6b7c8d", ""},
		{"DELETE", "/v1/batch/abc?reason=typo", "", "batch_submit", "/v1/batch/abc", "/v1/batch/abc", "reason=typo"},
	}
	for _, c := range cases {
		t.Run(c.method+" "+c.path, func(t *testing.T) {
			resp := do(t, c.method, gw.URL+c.path, c.body, nil)
			if resp.StatusCode != http.StatusAccepted {
				t.Fatalf("status %d, want the upstream's 202", resp.StatusCode)
			}
			if got := resp.Header.Get("X-Upstream"); got != c.upstream {
				t.Fatalf("reached %q, want %q", got, c.upstream)
			}
			if c.method == "HEAD" {
				return
			}
			s := decode[seen](t, resp)
			if s.Method != c.method || s.Path != c.wantPath || s.RawPath != c.wantRaw || s.RawQuery != c.wantQuery || s.Body != c.body {
				t.Errorf("upstream saw %+v; want %s path %q raw %q query %q body %q",
					s, c.method, c.wantPath, c.wantRaw, c.wantQuery, c.body)
			}
		})
	}
}

func TestBasePathIsPrefixed(t *testing.T) {
	p := echoUpstream(t, "predict", 200)
	gw, _ := startGateway(t, p.URL+"/fn", p.URL, p.URL)
	s := decode[seen](t, do(t, "POST", gw.URL+"/v1/predict?a=1", "{}", nil))
	if s.Path != "/fn/v1/predict" || s.RawQuery != "a=1" {
		t.Errorf("upstream saw path %q query %q", s.Path, s.RawQuery)
	}
}

func TestForwardedAndTraceHeaders(t *testing.T) {
	gw, _ := threeUpstreams(t)
	host := strings.TrimPrefix(gw.URL, "http://")
	s := decode[seen](t, do(t, "POST", gw.URL+"/v1/predict", "{}", map[string]string{
		"X-Forwarded-For":       "203.0.113.7",
		"traceparent":           "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
		"X-Cloud-Trace-Context": "105445aa7843bc8bf206b12000100000/1;o=1",
	}))
	if s.XFF != "203.0.113.7, 127.0.0.1" {
		t.Errorf("X-Forwarded-For %q, want the client's chain plus 127.0.0.1", s.XFF)
	}
	if s.XFHost != host || s.XFProto != "http" {
		t.Errorf("X-Forwarded-Host %q Proto %q, want %q http", s.XFHost, s.XFProto, host)
	}
	if s.Host == host {
		t.Errorf("upstream Host %q should be its own, not the gateway's", s.Host)
	}
	if s.Traceparent != "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01" || s.CloudTrace != "105445aa7843bc8bf206b12000100000/1;o=1" {
		t.Errorf("trace headers not passed: %q %q", s.Traceparent, s.CloudTrace)
	}
	s = decode[seen](t, do(t, "GET", gw.URL+"/v1/batch/x", "", nil))
	if s.XFF != "127.0.0.1" {
		t.Errorf("X-Forwarded-For %q, want 127.0.0.1", s.XFF)
	}
}

func TestUpstreamStatusAndBodyPassThrough(t *testing.T) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusNotFound)
		_, _ = io.WriteString(w, `{"error": {"code": "job_not_found", "message": "no job abc"}}`)
	}))
	defer up.Close()
	gw, _ := startGateway(t, up.URL, up.URL, up.URL)
	resp := do(t, "GET", gw.URL+"/v1/batch/abc", "", nil)
	checkError(t, resp, http.StatusNotFound, "job_not_found")
}

func TestNotFound(t *testing.T) {
	gw, _ := threeUpstreams(t)
	for _, p := range []string{"/nope", "/v1", "/v1/predict/", "/v1/batch/", "/v1/batch/a/b", "/v1/batch//", "//v1/predict", "/v2/predict", "/ready/x"} {
		t.Run(p, func(t *testing.T) {
			e := checkError(t, do(t, "GET", gw.URL+p, "", nil), http.StatusNotFound, "not_found")
			if !strings.Contains(e.Error.Message, "POST /v1/predict") {
				t.Errorf("404 message should list the routes: %q", e.Error.Message)
			}
		})
	}
}

func TestMethodNotAllowed(t *testing.T) {
	gw, _ := threeUpstreams(t)
	cases := []struct{ method, path, allow string }{
		{"GET", "/v1/predict", "POST"},
		{"PUT", "/v1/predict", "POST"},
		{"PUT", "/v1/batch", "POST, GET, HEAD"},
		{"POST", "/v1/batch/abc", "GET, HEAD, DELETE"},
		{"PUT", "/v1/batch/abc", "GET, HEAD, DELETE"},
		{"DELETE", "/v1/batch", "POST, GET, HEAD"},
		{"POST", "/", "GET, HEAD"},
		{"POST", "/ready", "GET, HEAD"},
		{"OPTIONS", "/healthz", "GET, HEAD"},
	}
	for _, c := range cases {
		t.Run(c.method+" "+c.path, func(t *testing.T) {
			resp := do(t, c.method, gw.URL+c.path, "", nil)
			checkError(t, resp, http.StatusMethodNotAllowed, "method_not_allowed")
			if got := resp.Header.Get("Allow"); got != c.allow {
				t.Errorf("Allow %q, want %q", got, c.allow)
			}
		})
	}
}

func TestUpstreamDown(t *testing.T) {
	p := echoUpstream(t, "predict", 200)
	dead := deadURL(t)
	gw, logs := startGateway(t, p.URL, dead, dead)
	for _, c := range []struct{ method, path string }{{"POST", "/v1/batch"}, {"GET", "/v1/batch/abc"}} {
		resp := do(t, c.method, gw.URL+c.path, "{}", nil)
		e := checkError(t, resp, http.StatusServiceUnavailable, "upstream_unavailable")
		if !strings.Contains(e.Error.Message, "batch_") {
			t.Errorf("message should name the function: %q", e.Error.Message)
		}
	}
	// The live one still answers.
	if resp := do(t, "POST", gw.URL+"/v1/predict", "{}", nil); resp.StatusCode != http.StatusAccepted {
		t.Errorf("predict: %d", resp.StatusCode)
	}
	if !strings.Contains(logs.String(), `"status":503`) {
		t.Errorf("503 not in the access log:\n%s", logs)
	}
}

func TestUpstreamTimeout(t *testing.T) {
	release := make(chan struct{})
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-time.After(5 * time.Second):
		}
	}))
	defer slow.Close()
	defer close(release)
	gw, _ := startGateway(t, slow.URL, slow.URL, slow.URL, func(c *config) { c.upstreamTimeout = 100 * time.Millisecond })
	start := time.Now()
	checkError(t, do(t, "POST", gw.URL+"/v1/predict", "{}", nil), http.StatusGatewayTimeout, "upstream_timeout")
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("took %s", d)
	}
}

type readyBody struct {
	Status     string `json:"status"`
	Components map[string]struct {
		Status int             `json:"status"`
		Body   json.RawMessage `json:"body"`
	} `json:"components"`
}

func TestReadyAllUp(t *testing.T) {
	gw, _ := threeUpstreams(t)
	resp := do(t, "GET", gw.URL+"/ready", "", nil)
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "application/json" {
		t.Fatalf("status %d type %q", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	rb := decode[readyBody](t, resp)
	if rb.Status != "ready" || len(rb.Components) != 3 {
		t.Fatalf("%+v", rb)
	}
	for _, name := range upstreamNames {
		c := rb.Components[name]
		var body map[string]any
		if c.Status != 200 || json.Unmarshal(c.Body, &body) != nil || body["component"] != name {
			t.Errorf("%s: %+v", name, c)
		}
	}
}

func TestReadyDegraded(t *testing.T) {
	p := echoUpstream(t, "predict", 200)
	notReady := echoUpstream(t, "batch_submit", 503)
	hang := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
		case <-time.After(5 * time.Second):
		}
	}))
	defer hang.Close()
	gw, _ := startGateway(t, p.URL, notReady.URL, hang.URL, func(c *config) { c.readyTimeout = 200 * time.Millisecond })
	start := time.Now()
	resp := do(t, "GET", gw.URL+"/ready", "", nil)
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("/ready took %s; the per-function bound is not applied", d)
	}
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("status %d, want 503", resp.StatusCode)
	}
	rb := decode[readyBody](t, resp)
	if rb.Status != "unready" {
		t.Errorf("status %q", rb.Status)
	}
	if c := rb.Components["predict"]; c.Status != 200 {
		t.Errorf("predict %+v", c)
	}
	if c := rb.Components["batch_submit"]; c.Status != 503 || !bytes.Contains(c.Body, []byte(`"ok":false`)) {
		t.Errorf("batch_submit %+v (%s)", c, c.Body)
	}
	if c := rb.Components["batch_status"]; c.Status != 0 || string(c.Body) != "null" {
		t.Errorf("batch_status %+v (%s)", c, c.Body)
	}

	// A function that is down entirely, and one answering non-JSON.
	text := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, "OK") }))
	defer text.Close()
	gw2, _ := startGateway(t, deadURL(t), text.URL, p.URL)
	rb = decode[readyBody](t, do(t, "GET", gw2.URL+"/ready", "", nil))
	if c := rb.Components["predict"]; c.Status != 0 || string(c.Body) != "null" {
		t.Errorf("dead predict %+v", c)
	}
	if c := rb.Components["batch_submit"]; c.Status != 200 || string(c.Body) != "null" {
		t.Errorf("text batch_submit %+v (%s)", c, c.Body)
	}
}

func TestHealthz(t *testing.T) {
	gw, _ := startGateway(t, deadURL(t), deadURL(t), deadURL(t))
	resp := do(t, "GET", gw.URL+"/healthz", "", nil)
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/json" {
		t.Fatalf("status %d type %q", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	if m := decode[map[string]string](t, resp); m["status"] != "ok" {
		t.Errorf("%v", m)
	}
}

func TestAccessLogLine(t *testing.T) {
	gw, logs := threeUpstreams(t)
	do(t, "GET", gw.URL+"/v1/batch/abc?x=1", "", map[string]string{"User-Agent": "test \"agent\""})
	do(t, "GET", gw.URL+"/nope", "", nil)
	lines := strings.Split(strings.TrimSpace(logs.String()), "\n")
	if len(lines) != 2 {
		t.Fatalf("want 2 lines, got:\n%s", logs)
	}
	var entry struct {
		Severity    string `json:"severity"`
		Message     string `json:"message"`
		HTTPRequest struct {
			RequestMethod string `json:"requestMethod"`
			RequestURL    string `json:"requestUrl"`
			Status        int    `json:"status"`
			UserAgent     string `json:"userAgent"`
			Latency       string `json:"latency"`
		} `json:"httpRequest"`
	}
	if err := json.Unmarshal([]byte(lines[0]), &entry); err != nil {
		t.Fatalf("%q: %v", lines[0], err)
	}
	h := entry.HTTPRequest
	if entry.Severity != "INFO" || entry.Message != "GET /v1/batch/abc 202" || h.RequestMethod != "GET" ||
		h.RequestURL != "/v1/batch/abc?x=1" || h.Status != 202 || h.UserAgent != `test "agent"` ||
		!strings.HasSuffix(h.Latency, "s") {
		t.Errorf("%+v", entry)
	}
	if err := json.Unmarshal([]byte(lines[1]), &entry); err != nil || entry.Severity != "WARNING" || entry.HTTPRequest.Status != 404 {
		t.Errorf("%q: %v", lines[1], err)
	}
}

func TestMatch(t *testing.T) {
	cases := []struct {
		pattern, path string
		want          bool
	}{
		{"/", "/", true},
		{"/", "/x", false},
		{"/", "", false},
		{"/v1/predict", "/v1/predict", true},
		{"/v1/predict", "/v1/predict/", false},
		{"/v1/predict", "/v1/predictx", false},
		{"/v1/predict", "/v1", false},
		{"/v1/batch/{id}", "/v1/batch/abc", true},
		{"/v1/batch/{id}", "/v1/batch/", false},
		{"/v1/batch/{id}", "/v1/batch", false},
		{"/v1/batch/{id}", "/v1/batch/a/b", false},
		{"/v1/batch/{id}", "/v1/batch/a/", false},
		{"/v1/batch/{id}/x", "/v1/batch/a/x", true},
		{"/v1/batch/{id}/x", "/v1/batch//x", false},
	}
	for _, c := range cases {
		cr := compiledRoute{segs: splitPattern(c.pattern)}
		if got := cr.match(c.path); got != c.want {
			t.Errorf("%s ~ %q = %v, want %v", c.pattern, c.path, got, c.want)
		}
	}
}

func TestAppendJSONString(t *testing.T) {
	for _, s := range []string{"", "plain", `q"uo\te`, "new\nline\t\x01", "ünï©ødé", "bad\xffutf8", "\u2028"} {
		var back string
		b := appendJSONString(nil, s)
		if err := json.Unmarshal(b, &back); err != nil {
			t.Errorf("%q -> %s: %v", s, b, err)
			continue
		}
		if want := strings.ToValidUTF8(s, "\ufffd"); back != want {
			t.Errorf("%q -> %s -> %q", s, b, back)
		}
	}
}

func TestBadConfig(t *testing.T) {
	for _, u := range []string{"", "127.0.0.1:8081", "ftp://x", "http://x?y=1"} {
		cfg := defaultConfig()
		cfg.upstreams["predict"] = u
		if _, err := newGateway(cfg, newJSONLogger(io.Discard)); err == nil {
			t.Errorf("URL %q accepted", u)
		}
	}
}

func BenchmarkProxy(b *testing.B) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"prediction": 0}`)
	}))
	defer up.Close()
	cfg := defaultConfig()
	cfg.upstreams = map[string]string{"predict": up.URL, "batch_submit": up.URL, "batch_status": up.URL}
	g, err := newGateway(cfg, newJSONLogger(io.Discard))
	if err != nil {
		b.Fatal(err)
	}
	gw := httptest.NewServer(g.withAccessLog(g))
	defer gw.Close()
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 256}}
	body := `{"features": [5.1, 3.5, 1.4, 0.2]}`
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			resp, err := client.Post(gw.URL+"/v1/predict", "application/json", strings.NewReader(body))
			if err != nil {
				b.Fatal(err)
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 {
				b.Fatal(resp.StatusCode)
			}
		}
	})
}
