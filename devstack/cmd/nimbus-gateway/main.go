// Command nimbus-gateway is the local stand-in for API Gateway: one base URL
// in front of the three Nimbus functions (predict, batch_submit,
// batch_status), each a functions-framework process.
//
// It is a plain reverse proxy built on net/http/httputil. Paths and queries
// reach the functions unchanged; errors the gateway makes itself use the
// project's one error shape:
//
//	{"error": {"code": "<machine_word>", "message": "<what is wrong and what to do>"}}
//
// Every request gets one Cloud Logging style JSON line on stderr, and counts
// in the Prometheus series at GET /metrics. The gateway also serves the API's
// OpenAPI document (GET /openapi.json, from --openapi), a page rendering it
// (GET /docs) and the jobs page (GET /ui).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// route is one line of the gateway's API. A route either proxies to one of
// the functions (upstream) or is answered by the gateway itself (local).
//
// pattern is a path whose segments are literals or {name} (exactly one
// non-empty segment). Routes are tried in order and the first whose path and
// method match wins, so list a literal before a {param} in the same place.
// A GET route also answers HEAD.
type route struct {
	method   string
	pattern  string
	upstream string                                             // a name in --predict/--batch-submit/--batch-status
	local    func(*gateway, http.ResponseWriter, *http.Request) // or a handler of the gateway's own
}

// routes is the gateway's whole API; a new route is one line here.
var routes = []route{
	{method: http.MethodGet, pattern: "/", upstream: "predict"},
	{method: http.MethodPost, pattern: "/v1/predict", upstream: "predict"},
	{method: http.MethodPost, pattern: "/v1/batch", upstream: "batch_submit"},
	{method: http.MethodGet, pattern: "/v1/batch", upstream: "batch_status"}, // the caller's recent jobs
	{method: http.MethodGet, pattern: "/v1/batch/{job_id}", upstream: "batch_status"},
	{method: http.MethodDelete, pattern: "/v1/batch/{job_id}", upstream: "batch_submit"}, // cancel: batch_submit owns job writes
	{method: http.MethodGet, pattern: "/ready", local: (*gateway).ready},
	{method: http.MethodGet, pattern: "/healthz", local: (*gateway).healthz},
	{method: http.MethodGet, pattern: "/metrics", local: (*gateway).serveMetrics},
	{method: http.MethodGet, pattern: "/openapi.json", local: (*gateway).openapi},
	{method: http.MethodGet, pattern: "/docs", local: page("docs.html")},
	{method: http.MethodGet, pattern: "/ui", local: page("ui.html")},
	{method: http.MethodGet, pattern: "/ui/{file}", local: (*gateway).uiAsset},
}

// upstreamNames is the order upstreams are listed in logs and /ready.
var upstreamNames = []string{"predict", "batch_submit", "batch_status"}

// config is everything the flags decide.
type config struct {
	listen          string
	upstreams       map[string]string // name -> base URL
	upstreamTimeout time.Duration     // time to wait for an upstream's response headers
	idleTimeout     time.Duration     // how long an idle upstream connection is kept
	readyTimeout    time.Duration     // per-function bound for GET /ready
	shutdownTimeout time.Duration
	accessLog       bool
	openapi         string // path of openapi.yaml, served as /openapi.json; "" for none
}

func defaultConfig() config {
	return config{
		listen: "127.0.0.1:8080",
		upstreams: map[string]string{
			"predict":      "http://127.0.0.1:8081",
			"batch_submit": "http://127.0.0.1:8082",
			"batch_status": "http://127.0.0.1:8083",
		},
		upstreamTimeout: 60 * time.Second,
		// functions-framework serves through gunicorn, whose keep-alive is 2 s:
		// keep idle connections for less so a POST never goes out on a
		// connection the function is closing at that moment.
		idleTimeout:     time.Second,
		readyTimeout:    2 * time.Second,
		shutdownTimeout: 10 * time.Second,
		accessLog:       true,
	}
}

func parseFlags(args []string) (config, error) {
	cfg := defaultConfig()
	fs := flag.NewFlagSet("nimbus-gateway", flag.ContinueOnError)
	fs.StringVar(&cfg.listen, "listen", cfg.listen, "address to listen on")
	predict := fs.String("predict", cfg.upstreams["predict"], "base URL of the predict function")
	submit := fs.String("batch-submit", cfg.upstreams["batch_submit"], "base URL of the batch_submit function")
	status := fs.String("batch-status", cfg.upstreams["batch_status"], "base URL of the batch_status function")
	fs.DurationVar(&cfg.upstreamTimeout, "upstream-timeout", cfg.upstreamTimeout, "how long to wait for a function to answer before a 504")
	fs.DurationVar(&cfg.idleTimeout, "upstream-idle-timeout", cfg.idleTimeout, "how long to keep an idle connection to a function (keep it below the function's keep-alive)")
	fs.DurationVar(&cfg.readyTimeout, "ready-timeout", cfg.readyTimeout, "bound for each function's GET /ready during GET /ready")
	fs.DurationVar(&cfg.shutdownTimeout, "shutdown-timeout", cfg.shutdownTimeout, "how long in-flight requests may finish after SIGINT/SIGTERM")
	fs.BoolVar(&cfg.accessLog, "access-log", cfg.accessLog, "log one JSON line per request to stderr")
	fs.StringVar(&cfg.openapi, "openapi", cfg.openapi, "the API's OpenAPI document (openapi.yaml), served as /openapi.json and at /docs")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: nimbus-gateway [flags]\n\nThe local stand-in for API Gateway in front of the Nimbus functions.\n\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return cfg, err
	}
	if fs.NArg() > 0 {
		return cfg, fmt.Errorf("unexpected arguments: %v", fs.Args())
	}
	cfg.upstreams = map[string]string{"predict": *predict, "batch_submit": *submit, "batch_status": *status}
	return cfg, nil
}

// upstream is one function behind the gateway.
type upstream struct {
	name  string
	base  *url.URL
	proxy *httputil.ReverseProxy
}

// compiledRoute is a route with its pattern split and its handler resolved.
type compiledRoute struct {
	route
	segs    []segment
	handler http.Handler
}

type segment struct {
	lit   string
	param bool
}

// gateway is the http.Handler of nimbus-gateway.
type gateway struct {
	cfg       config
	routes    []compiledRoute
	upstreams []*upstream // in upstreamNames order
	transport *http.Transport
	log       *jsonLogger
	notFound  string   // the message of a 404
	spec      []byte   // the OpenAPI document as JSON, nil without --openapi
	metrics   *metrics // the series GET /metrics answers
}

func newGateway(cfg config, logger *jsonLogger) (*gateway, error) {
	g := &gateway{cfg: cfg, log: logger, metrics: newMetrics()}
	if cfg.openapi != "" {
		spec, err := loadSpec(cfg.openapi)
		if err != nil {
			return nil, err
		}
		g.spec = spec
	}
	g.transport = &http.Transport{
		Proxy: nil, // never send local traffic through an HTTP(S)_PROXY
		DialContext: (&net.Dialer{
			Timeout:   5 * time.Second,
			KeepAlive: 30 * time.Second,
		}).DialContext,
		MaxIdleConns:          1024,
		MaxIdleConnsPerHost:   256,
		IdleConnTimeout:       cfg.idleTimeout,
		ResponseHeaderTimeout: cfg.upstreamTimeout,
		ExpectContinueTimeout: time.Second,
		DisableCompression:    true, // pass Accept-Encoding and bodies through untouched
	}

	byName := map[string]*upstream{}
	for _, name := range upstreamNames {
		raw, ok := cfg.upstreams[name]
		if !ok || raw == "" {
			return nil, fmt.Errorf("no URL for the %s function", name)
		}
		u, err := url.Parse(raw)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return nil, fmt.Errorf("the %s function's URL %q is not an http(s)://host:port base URL", name, raw)
		}
		if u.RawQuery != "" || u.Fragment != "" {
			return nil, fmt.Errorf("the %s function's URL %q must not have a query or fragment", name, raw)
		}
		up := &upstream{name: name, base: u}
		up.proxy = g.newProxy(up)
		byName[name] = up
		g.upstreams = append(g.upstreams, up)
	}

	var known []string
	for _, r := range routes {
		cr := compiledRoute{route: r, segs: splitPattern(r.pattern)}
		switch {
		case r.upstream != "":
			up, ok := byName[r.upstream]
			if !ok {
				return nil, fmt.Errorf("route %s %s: unknown upstream %q", r.method, r.pattern, r.upstream)
			}
			cr.handler = up.proxy
		case r.local != nil:
			local := r.local
			cr.handler = http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) { local(g, w, req) })
		default:
			return nil, fmt.Errorf("route %s %s has neither an upstream nor a local handler", r.method, r.pattern)
		}
		g.routes = append(g.routes, cr)
		known = append(known, r.method+" "+r.pattern)
	}
	g.notFound = "; the gateway serves " + strings.Join(known, ", ")
	return g, nil
}

func (g *gateway) newProxy(up *upstream) *httputil.ReverseProxy {
	return &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			// Keep the client's X-Forwarded-For chain and add the client, as
			// API Gateway does; X-Forwarded-Host/Proto describe the gateway.
			// (Rewrite starts with the inbound X-Forwarded-* removed.)
			if prior, ok := pr.In.Header["X-Forwarded-For"]; ok {
				pr.Out.Header["X-Forwarded-For"] = prior
			}
			pr.SetURL(up.base) // path and query kept, joined onto the base URL
			pr.SetXForwarded()
			// traceparent, tracestate and X-Cloud-Trace-Context are
			// end-to-end headers: ReverseProxy passes them on as they are.
		},
		Transport:      g.transport,
		BufferPool:     bufferPool{},
		ModifyResponse: g.metrics.countModel,
		ErrorHandler:   g.proxyError(up),
		ErrorLog:       log.New(g.log.writer("WARNING"), "", 0),
	}
}

// proxyError answers when a function could not be reached or did not answer.
func (g *gateway) proxyError(up *upstream) func(http.ResponseWriter, *http.Request, error) {
	return func(w http.ResponseWriter, r *http.Request, err error) {
		if rec, ok := w.(*statusRecorder); ok {
			rec.err = err
		}
		var (
			status int
			code   string
			msg    string
		)
		switch {
		case r.Context().Err() != nil && errors.Is(err, context.Canceled):
			// The client went away; nobody reads this answer.
			status, code, msg = 499, "client_closed_request", "the client closed the request before the function answered"
		case isDialError(err):
			g.metrics.upErrors.WithLabelValues(up.name, "unavailable").Inc()
			status, code = http.StatusServiceUnavailable, "upstream_unavailable"
			msg = fmt.Sprintf("the %s function at %s is not reachable; start it (nimbus up) or check the gateway's --%s flag, then retry",
				up.name, up.base.Redacted(), strings.ReplaceAll(up.name, "_", "-"))
			w.Header().Set("Retry-After", "1")
		case isTimeout(err):
			g.metrics.upErrors.WithLabelValues(up.name, "timeout").Inc()
			status, code = http.StatusGatewayTimeout, "upstream_timeout"
			msg = fmt.Sprintf("the %s function did not answer within %s; retry, or look at the function's log for what blocks it",
				up.name, g.cfg.upstreamTimeout)
		default:
			g.metrics.upErrors.WithLabelValues(up.name, "error").Inc()
			status, code = http.StatusBadGateway, "upstream_error"
			msg = fmt.Sprintf("the %s function broke off the exchange (%s); retry, or look at the function's log", up.name, errSummary(err))
		}
		writeError(w, status, code, msg)
	}
}

// isDialError tells whether the request never reached the function (refused,
// unresolvable, dial timeout): safe to retry, nothing was sent.
func isDialError(err error) bool {
	var op *net.OpError
	if errors.As(err, &op) && op.Op == "dial" {
		return true
	}
	var dns *net.DNSError
	return errors.As(err, &dns)
}

func isTimeout(err error) bool {
	if errors.Is(err, context.DeadlineExceeded) {
		return true
	}
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

func errSummary(err error) string {
	s := err.Error()
	if len(s) > 200 {
		s = s[:200] + "..."
	}
	return s
}

// ServeHTTP routes a request: a matching route's handler, else 405 when the
// path exists with other methods, else 404.
func (g *gateway) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	rec, ok := w.(*statusRecorder)
	if !ok {
		rec = &statusRecorder{ResponseWriter: w}
	}
	route := unmatchedRoute
	g.metrics.inFlight.Inc()
	// Deferred so a request the proxy aborts (panic ErrAbortHandler) counts too.
	defer func() {
		g.metrics.inFlight.Dec()
		status := rec.status
		if status == 0 {
			status = http.StatusOK
		}
		g.metrics.observe(route, r.Method, status, time.Since(start))
	}()
	g.route(rec, r, &route)
}

// route answers r with the matching route's handler and sets *pattern to the
// route's pattern (for the metrics' route label).
func (g *gateway) route(w http.ResponseWriter, r *http.Request, pattern *string) {
	path := r.URL.EscapedPath()
	pathKnown := false
	for i := range g.routes {
		cr := &g.routes[i]
		if !cr.match(path) {
			continue
		}
		if r.Method == cr.method || (r.Method == http.MethodHead && cr.method == http.MethodGet) {
			*pattern = cr.pattern
			cr.handler.ServeHTTP(w, r)
			return
		}
		pathKnown = true
	}
	if pathKnown {
		*pattern = g.firstPattern(path)
		allow := g.allowed(path)
		w.Header().Set("Allow", allow)
		writeError(w, http.StatusMethodNotAllowed, "method_not_allowed",
			fmt.Sprintf("%s is not allowed on %s; use %s", r.Method, path, allow))
		return
	}
	writeError(w, http.StatusNotFound, "not_found", "no route for "+r.Method+" "+path+g.notFound)
}

// firstPattern is the pattern of the first route matching path.
func (g *gateway) firstPattern(path string) string {
	for i := range g.routes {
		if g.routes[i].match(path) {
			return g.routes[i].pattern
		}
	}
	return unmatchedRoute
}

// allowed lists the methods the routes matching path accept, for Allow.
func (g *gateway) allowed(path string) string {
	var methods []string
	add := func(m string) {
		for _, have := range methods {
			if have == m {
				return
			}
		}
		methods = append(methods, m)
	}
	for i := range g.routes {
		if g.routes[i].match(path) {
			add(g.routes[i].method)
			if g.routes[i].method == http.MethodGet {
				add(http.MethodHead)
			}
		}
	}
	return strings.Join(methods, ", ")
}

func splitPattern(p string) []segment {
	p = strings.TrimPrefix(p, "/")
	if p == "" {
		return nil
	}
	var segs []segment
	for _, s := range strings.Split(p, "/") {
		if strings.HasPrefix(s, "{") && strings.HasSuffix(s, "}") {
			segs = append(segs, segment{param: true})
		} else {
			segs = append(segs, segment{lit: s})
		}
	}
	return segs
}

// match tells whether the (escaped) request path fits the route's pattern;
// it does not allocate.
func (cr *compiledRoute) match(path string) bool {
	if path == "" || path[0] != '/' {
		return false
	}
	rest := path[1:]
	if len(cr.segs) == 0 {
		return rest == ""
	}
	for i, s := range cr.segs {
		last := i == len(cr.segs)-1
		j := strings.IndexByte(rest, '/')
		var seg string
		switch {
		case j < 0 && last:
			seg, rest = rest, ""
		case j >= 0 && !last:
			seg, rest = rest[:j], rest[j+1:]
		default:
			return false
		}
		if s.param {
			if seg == "" {
				return false
			}
		} else if seg != s.lit {
			return false
		}
	}
	return true
}

func (g *gateway) healthz(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, []byte(`{"status": "ok"}`))
}

func main() {
	logger := newJSONLogger(os.Stderr)
	cfg, err := parseFlags(os.Args[1:])
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	}
	if err != nil {
		logger.line("ERROR", "nimbus-gateway: "+err.Error())
		os.Exit(2)
	}
	if err := run(cfg, logger); err != nil {
		logger.line("ERROR", "nimbus-gateway: "+err.Error())
		os.Exit(1)
	}
}

func run(cfg config, logger *jsonLogger) error {
	g, err := newGateway(cfg, logger)
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", cfg.listen)
	if err != nil {
		return err
	}
	var handler http.Handler = g
	if cfg.accessLog {
		handler = g.withAccessLog(g)
	}
	srv := &http.Server{
		Handler:           handler,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       120 * time.Second,
		ErrorLog:          log.New(logger.writer("WARNING"), "", 0),
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	var ups []string
	for _, up := range g.upstreams {
		ups = append(ups, up.name+"="+up.base.Redacted())
	}
	logger.line("INFO", fmt.Sprintf("nimbus-gateway: listening on http://%s (%s)", ln.Addr(), strings.Join(ups, ", ")))

	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(ln) }()
	select {
	case err := <-serveErr:
		return err
	case <-ctx.Done():
	}
	stop()
	logger.line("INFO", "nimbus-gateway: shutting down")
	shutdownCtx, cancel := context.WithTimeout(context.Background(), cfg.shutdownTimeout)
	defer cancel()
	if err := srv.Shutdown(shutdownCtx); err != nil {
		srv.Close()
	}
	g.transport.CloseIdleConnections()
	return nil
}

// writeError answers with the project's one error shape.
func writeError(w http.ResponseWriter, status int, code, message string) {
	b := make([]byte, 0, 64+len(code)+len(message))
	b = append(b, `{"error": {"code": `...)
	b = appendJSONString(b, code)
	b = append(b, `, "message": `...)
	b = appendJSONString(b, message)
	b = append(b, "}}"...)
	writeJSON(w, status, b)
}

func writeJSON(w http.ResponseWriter, status int, body []byte) {
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Content-Length", strconv.Itoa(len(body)))
	h.Del("Content-Encoding")
	w.WriteHeader(status)
	_, _ = w.Write(body)
}

// bufferPool recycles ReverseProxy's 32 KiB copy buffers.
type bufferPool struct{}

var copyBuffers = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

func (bufferPool) Get() []byte  { return *copyBuffers.Get().(*[]byte) }
func (bufferPool) Put(b []byte) { copyBuffers.Put(&b) }
