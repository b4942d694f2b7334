package main

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// repoSpec is the repository's openapi.yaml, the one the stack serves.
var repoSpec = filepath.Join("..", "..", "..", "openapi.yaml")

func TestOpenAPIJSONIsTheRepositorysSpec(t *testing.T) {
	p := echoUpstream(t, "predict", 200)
	gw, _ := startGateway(t, p.URL, p.URL, p.URL, func(c *config) { c.openapi = repoSpec })
	resp := do(t, "GET", gw.URL+"/openapi.json", "", nil)
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/json" {
		t.Fatalf("status %d, Content-Type %q", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	spec := decode[map[string]any](t, resp)
	if v, _ := spec["openapi"].(string); !strings.HasPrefix(v, "3.") {
		t.Errorf("openapi %v, want 3.x", spec["openapi"])
	}
	paths, _ := spec["paths"].(map[string]any)
	for _, want := range []string{"/", "/ready", "/v1/predict", "/v1/batch", "/v1/batch/{job_id}"} {
		if paths[want] == nil {
			t.Errorf("paths lack %s", want)
		}
	}
	b, _ := json.Marshal(spec)
	if strings.Contains(string(b), "x-google-") || strings.Contains(string(b), "${") {
		t.Errorf("the served spec keeps API Gateway's deploy wiring")
	}
}

func TestSpecKeepsTheFilesOrderAndValues(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "spec.yaml")
	_ = os.WriteFile(path, []byte(`openapi: 3.0.3
x-google-api-management: {backends: {a: {address: "${A_URL}"}}}
paths:
  /z: {get: {x-google-backend: a, responses: {"200": {description: ok}}}}
  /a: {get: {responses: {"200": {description: ok}}}}
anchors: &x {n: 1, f: 1.5, t: true, none: null, s: "2.0", big: 12345678901}
again: *x
`), 0o600)
	got, err := loadSpec(path)
	if err != nil {
		t.Fatal(err)
	}
	want := `{"openapi":"3.0.3","paths":{"/z":{"get":{"responses":{"200":{"description":"ok"}}}},` +
		`"/a":{"get":{"responses":{"200":{"description":"ok"}}}}},` +
		`"anchors":{"n":1,"f":1.5,"t":true,"none":null,"s":"2.0","big":12345678901},` +
		`"again":{"n":1,"f":1.5,"t":true,"none":null,"s":"2.0","big":12345678901}}`
	if string(got) != want {
		t.Errorf("got  %s\nwant %s", got, want)
	}
}

// Every proxied route of the gateway is an operation of the spec, and back.
func TestRoutesAreTheSpecsOperations(t *testing.T) {
	raw, err := loadSpec(repoSpec)
	if err != nil {
		t.Fatal(err)
	}
	var spec struct {
		Paths map[string]map[string]any `json:"paths"`
	}
	if err := json.Unmarshal(raw, &spec); err != nil {
		t.Fatal(err)
	}
	ops := map[string]bool{}
	for path, item := range spec.Paths {
		for method := range item {
			if method != "parameters" {
				ops[strings.ToUpper(method)+" "+path] = true
			}
		}
	}
	for _, r := range routes {
		key := r.method + " " + r.pattern
		if r.upstream != "" && !ops[key] {
			t.Errorf("route %s is not in openapi.yaml", key)
		}
		delete(ops, key)
	}
	for op := range ops {
		t.Errorf("openapi.yaml's %s has no gateway route", op)
	}
}

func TestNoSpecConfigured(t *testing.T) {
	gw, _ := threeUpstreams(t)
	checkError(t, do(t, "GET", gw.URL+"/openapi.json", "", nil), http.StatusNotFound, "not_found")
}

func TestBadSpecIsRefusedAtStart(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.yaml")
	_ = os.WriteFile(bad, []byte("openapi: [unclosed"), 0o600)
	for _, path := range []string{bad, filepath.Join(dir, "missing.yaml")} {
		cfg := defaultConfig()
		cfg.openapi = path
		if _, err := newGateway(cfg, newJSONLogger(io.Discard)); err == nil {
			t.Errorf("spec %s accepted", path)
		}
	}
}

func TestPagesAreServedWithTheirAssets(t *testing.T) {
	gw, _ := threeUpstreams(t)
	for _, c := range []struct{ path, ctype, contains string }{
		{"/ui", "text/html", `src="/ui/ui.js"`},
		{"/docs", "text/html", `src="/ui/docs.js"`},
		{"/ui/ui.js", "text/javascript", "/v1/batch?limit="},
		{"/ui/docs.js", "text/javascript", "/openapi.json"},
		{"/ui/style.css", "text/css", ".bar"},
	} {
		resp := do(t, "GET", gw.URL+c.path, "", nil)
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), c.ctype) ||
			!strings.Contains(string(b), c.contains) {
			t.Errorf("GET %s: %d %q, body has %q: %v", c.path, resp.StatusCode,
				resp.Header.Get("Content-Type"), c.contains, strings.Contains(string(b), c.contains))
		}
		// Nothing is loaded from elsewhere: the pages work offline.
		if regexp.MustCompile(`(src|href)="https?:`).Match(b) {
			t.Errorf("%s loads something from another origin", c.path)
		}
	}
	for _, p := range []string{"/ui/nope.js", "/ui/.hidden", "/ui/static"} {
		checkError(t, do(t, "GET", gw.URL+p, "", nil), http.StatusNotFound, "not_found")
	}
}

// metricValue finds one sample in Prometheus's text format.
func metricValue(t *testing.T, body, name string, labels ...string) float64 {
	t.Helper()
	for _, line := range strings.Split(body, "\n") {
		if !strings.HasPrefix(line, name+"{") {
			continue
		}
		ok := true
		for _, l := range labels {
			ok = ok && strings.Contains(line, l)
		}
		if ok {
			v, err := strconv.ParseFloat(line[strings.LastIndexByte(line, ' ')+1:], 64)
			if err != nil {
				t.Fatal(err)
			}
			return v
		}
	}
	return 0
}

func TestMetricsCountRoutesByPatternAndStatus(t *testing.T) {
	gw, _ := startGateway(t, echoUpstream(t, "predict", 200).URL, echoUpstream(t, "batch_submit", 200).URL, deadURL(t))
	for range 3 {
		do(t, "GET", gw.URL+"/v1/batch/6f1c2b9e-8a3e-4e2b-9d1e-0c4f5a6b7c8d", "", nil) // status upstream down: 503
	}
	do(t, "POST", gw.URL+"/v1/predict", "{}", nil)
	do(t, "GET", gw.URL+"/nope/123", "", nil)
	do(t, "PUT", gw.URL+"/v1/predict", "", nil)
	resp := do(t, "GET", gw.URL+"/metrics", "", nil)
	b, _ := io.ReadAll(resp.Body)
	body := string(b)
	if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/plain") {
		t.Fatalf("GET /metrics: %d %q", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	checks := []struct {
		name   string
		labels []string
		want   float64
	}{
		{"nimbus_gateway_requests_total", []string{`route="/v1/batch/{job_id}"`, `method="GET"`, `status="503"`}, 3},
		{"nimbus_gateway_requests_total", []string{`route="/v1/predict"`, `method="POST"`, `status="202"`}, 1},
		{"nimbus_gateway_requests_total", []string{`route="/v1/predict"`, `method="PUT"`, `status="405"`}, 1},
		{"nimbus_gateway_requests_total", []string{`route="unmatched"`, `status="404"`}, 1},
		{"nimbus_gateway_request_duration_seconds_count", []string{`route="/v1/batch/{job_id}"`}, 3},
		{"nimbus_gateway_upstream_errors_total", []string{`upstream="batch_status"`, `kind="unavailable"`}, 3},
	}
	for _, c := range checks {
		if got := metricValue(t, body, c.name, c.labels...); got != c.want {
			t.Errorf("%s%v = %v, want %v", c.name, c.labels, got, c.want)
		}
	}
	if strings.Contains(body, "6f1c2b9e") || strings.Contains(body, "/nope") {
		t.Error("a raw path reached a label")
	}
	if strings.Contains(body, "nimbus_gateway_model_responses_total{") {
		t.Error("a model counted though no answer named one")
	}
	if !strings.Contains(body, `nimbus_gateway_request_duration_seconds_bucket{method="GET",route="/v1/batch/{job_id}",le="0.005"}`) {
		t.Error("no latency histogram buckets")
	}
}

func TestMetricsCountTheModelVersionThatAnswered(t *testing.T) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Nimbus-Model", "iris/"+r.URL.Query().Get("v"))
		w.Write([]byte(`{"prediction": 0}`))
	}))
	defer up.Close()
	gw, _ := startGateway(t, up.URL, up.URL, up.URL)
	for _, v := range []string{"1", "2", "2"} {
		do(t, "POST", gw.URL+"/v1/predict?v="+v, "{}", nil)
	}
	b, _ := io.ReadAll(do(t, "GET", gw.URL+"/metrics", "", nil).Body)
	for v, want := range map[string]float64{"1": 1, "2": 2} {
		if got := metricValue(t, string(b), "nimbus_gateway_model_responses_total", `model="iris/`+v+`"`); got != want {
			t.Errorf("iris/%s counted %v, want %v", v, got, want)
		}
	}
}
