package main

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"sync"
)

// component is one function's part of the GET /ready answer.
type component struct {
	Status int             `json:"status"`          // its HTTP status, 0 when unreachable
	Body   json.RawMessage `json:"body"`            // its JSON body, null when none or not JSON
	Error  string          `json:"error,omitempty"` // why it could not be asked
}

// ready asks every function's GET /ready at once, each bounded by
// --ready-timeout, and answers 200 only if all answered 200, else 503:
//
//	{"status": "ready"|"unready", "components": {"predict": {"status": 200, "body": {...}}, ...}}
func (g *gateway) ready(w http.ResponseWriter, r *http.Request) {
	results := make([]component, len(g.upstreams))
	var wg sync.WaitGroup
	for i, up := range g.upstreams {
		wg.Go(func() { results[i] = g.probe(r, up) })
	}
	wg.Wait()

	status, word := http.StatusOK, "ready"
	for _, c := range results {
		if c.Status != http.StatusOK {
			status, word = http.StatusServiceUnavailable, "unready"
		}
	}
	b := []byte(`{"status": "` + word + `", "components": {`)
	for i, up := range g.upstreams {
		if i > 0 {
			b = append(b, ", "...)
		}
		b = appendJSONString(b, up.name)
		b = append(b, ": "...)
		cb, err := json.Marshal(results[i])
		if err != nil { // cannot happen: Body is checked with json.Valid
			cb = []byte(`{"status": 0, "body": null}`)
		}
		b = append(b, cb...)
	}
	b = append(b, "}}"...)
	writeJSON(w, status, b)
}

// probe asks one function's GET <base>/ready, passing the caller's trace on.
func (g *gateway) probe(in *http.Request, up *upstream) component {
	ctx, cancel := context.WithTimeout(in.Context(), g.cfg.readyTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, up.base.JoinPath("ready").String(), nil)
	if err != nil {
		return component{Error: err.Error()}
	}
	req.Header.Set("Accept", "application/json")
	for _, h := range []string{"traceparent", "tracestate", "X-Cloud-Trace-Context"} {
		if v := in.Header.Get(h); v != "" {
			req.Header.Set(h, v)
		}
	}
	resp, err := g.transport.RoundTrip(req)
	if err != nil {
		return component{Error: errSummary(err)}
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	c := component{Status: resp.StatusCode}
	if err == nil && json.Valid(body) {
		c.Body = body
	}
	return c
}
