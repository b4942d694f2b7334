package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"strings"

	"gopkg.in/yaml.v3"
)

// loadSpec reads the project's OpenAPI document (openapi.yaml, the one
// source of truth) and answers it as JSON for GET /openapi.json. The
// x-google-* extensions are API Gateway's deploy-time wiring (backend
// addresses with ${..._URL} placeholders), not part of the API: left out.
func loadSpec(path string) ([]byte, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("the OpenAPI spec: %w", err)
	}
	var doc any
	if err := yaml.Unmarshal(raw, &doc); err != nil {
		return nil, fmt.Errorf("the OpenAPI spec %s is not YAML: %w", path, err)
	}
	clean, err := jsonable(doc)
	if err != nil {
		return nil, fmt.Errorf("the OpenAPI spec %s: %w", path, err)
	}
	top, ok := clean.(map[string]any)
	if !ok || top["openapi"] == nil || top["paths"] == nil {
		return nil, fmt.Errorf("the OpenAPI spec %s has no openapi version or paths", path)
	}
	return json.Marshal(clean)
}

// jsonable turns a decoded YAML value into one encoding/json takes (string
// map keys only), dropping x-google-* keys.
func jsonable(v any) (any, error) {
	switch t := v.(type) {
	case map[string]any:
		out := make(map[string]any, len(t))
		for k, val := range t {
			if strings.HasPrefix(k, "x-google-") {
				continue
			}
			c, err := jsonable(val)
			if err != nil {
				return nil, err
			}
			out[k] = c
		}
		return out, nil
	case map[any]any:
		out := make(map[string]any, len(t))
		for k, val := range t {
			key := fmt.Sprint(k)
			if strings.HasPrefix(key, "x-google-") {
				continue
			}
			c, err := jsonable(val)
			if err != nil {
				return nil, err
			}
			out[key] = c
		}
		return out, nil
	case []any:
		out := make([]any, len(t))
		for i, val := range t {
			c, err := jsonable(val)
			if err != nil {
				return nil, err
			}
			out[i] = c
		}
		return out, nil
	default:
		return v, nil
	}
}

// openapi answers GET /openapi.json.
func (g *gateway) openapi(w http.ResponseWriter, _ *http.Request) {
	if g.spec == nil {
		writeError(w, http.StatusNotFound, "not_found",
			"this gateway was started without --openapi; start it with --openapi openapi.yaml (nimbus up does)")
		return
	}
	w.Header().Set("Cache-Control", "no-cache")
	writeJSON(w, http.StatusOK, g.spec)
}
