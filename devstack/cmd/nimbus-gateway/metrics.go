package main

import (
	"net/http"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// metrics are the gateway's Prometheus series, served at GET /metrics:
//
//	nimbus_gateway_requests_total{route, method, status}
//	nimbus_gateway_request_duration_seconds{route, method}  (histogram)
//	nimbus_gateway_requests_in_flight
//	nimbus_gateway_upstream_errors_total{upstream, kind}
//	nimbus_gateway_model_responses_total{model}  (from X-Nimbus-Model: which version answered)
//
// route is the route's pattern (/v1/batch/{job_id}, never a raw id), or
// "unmatched" for a request no route answers, so the label stays bounded.
type metrics struct {
	registry *prometheus.Registry
	requests *prometheus.CounterVec
	latency  *prometheus.HistogramVec
	inFlight prometheus.Gauge
	upErrors *prometheus.CounterVec
	models   *prometheus.CounterVec
	handler  http.Handler
}

const unmatchedRoute = "unmatched"

func newMetrics() *metrics {
	m := &metrics{registry: prometheus.NewRegistry()}
	m.requests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "nimbus_gateway_requests_total",
		Help: "Requests answered by the gateway, by route pattern, method and HTTP status.",
	}, []string{"route", "method", "status"})
	m.latency = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: "nimbus_gateway_request_duration_seconds",
		Help: "Time from a request's arrival to its answer's end, by route pattern and method.",
		// From a cached health check (~1 ms) to a slow function (the 60 s upstream timeout).
		Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60},
	}, []string{"route", "method"})
	m.inFlight = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "nimbus_gateway_requests_in_flight",
		Help: "Requests being answered right now.",
	})
	m.upErrors = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "nimbus_gateway_upstream_errors_total",
		Help: "Requests a function did not answer, by function and kind (unavailable, timeout, error).",
	}, []string{"upstream", "kind"})
	m.models = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "nimbus_gateway_model_responses_total",
		Help: "Answers that named the model version that made them (X-Nimbus-Model: name/version).",
	}, []string{"model"})
	m.registry.MustRegister(m.requests, m.latency, m.inFlight, m.upErrors, m.models,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	m.handler = promhttp.HandlerFor(m.registry, promhttp.HandlerOpts{Registry: m.registry})
	return m
}

// methodLabel keeps the method label to the known verbs.
func methodLabel(method string) string {
	switch method {
	case http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut, http.MethodPatch,
		http.MethodDelete, http.MethodOptions:
		return method
	}
	return "OTHER"
}

func (m *metrics) observe(route, method string, status int, elapsed time.Duration) {
	method = methodLabel(method)
	m.requests.WithLabelValues(route, method, strconv.Itoa(status)).Inc()
	m.latency.WithLabelValues(route, method).Observe(elapsed.Seconds())
}

// modelHeader names the model version behind a prediction (nimbus/api.py).
const modelHeader = "X-Nimbus-Model"

// countModel counts an answer by the model version its X-Nimbus-Model names.
func (m *metrics) countModel(resp *http.Response) error {
	if v := resp.Header.Get(modelHeader); v != "" {
		if len(v) > 128 { // a label, not a payload
			v = v[:128]
		}
		m.models.WithLabelValues(v).Inc()
	}
	return nil
}

// serveMetrics answers GET /metrics in Prometheus's text format.
func (g *gateway) serveMetrics(w http.ResponseWriter, r *http.Request) {
	g.metrics.handler.ServeHTTP(w, r)
}
