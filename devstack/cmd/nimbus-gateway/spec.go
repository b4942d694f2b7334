package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strings"

	"gopkg.in/yaml.v3"
)

// loadSpec reads the project's OpenAPI document (openapi.yaml, the one
// source of truth) and answers it as JSON for GET /openapi.json, keys in the
// file's order (so /docs lists the operations as the file does). The
// x-google-* extensions are API Gateway's deploy-time wiring (backend
// addresses with ${..._URL} placeholders), not part of the API: left out.
func loadSpec(path string) ([]byte, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("the OpenAPI spec: %w", err)
	}
	var doc yaml.Node
	if err := yaml.Unmarshal(raw, &doc); err != nil {
		return nil, fmt.Errorf("the OpenAPI spec %s is not YAML: %w", path, err)
	}
	var buf bytes.Buffer
	if err := yamlToJSON(&buf, &doc); err != nil {
		return nil, fmt.Errorf("the OpenAPI spec %s: %w", path, err)
	}
	var top struct {
		OpenAPI string         `json:"openapi"`
		Paths   map[string]any `json:"paths"`
	}
	if err := json.Unmarshal(buf.Bytes(), &top); err != nil || top.OpenAPI == "" || len(top.Paths) == 0 {
		return nil, fmt.Errorf("the OpenAPI spec %s has no openapi version or paths", path)
	}
	return buf.Bytes(), nil
}

// yamlToJSON writes a YAML node as JSON, mappings in their order, leaving out
// x-google-* keys.
func yamlToJSON(buf *bytes.Buffer, n *yaml.Node) error {
	switch n.Kind {
	case yaml.DocumentNode:
		if len(n.Content) != 1 {
			return errors.New("expected one YAML document")
		}
		return yamlToJSON(buf, n.Content[0])
	case yaml.AliasNode:
		return yamlToJSON(buf, n.Alias)
	case yaml.MappingNode:
		buf.WriteByte('{')
		first := true
		for i := 0; i+1 < len(n.Content); i += 2 {
			key, value := n.Content[i], n.Content[i+1]
			if key.Kind != yaml.ScalarNode {
				return fmt.Errorf("line %d: a mapping key that is not a scalar", key.Line)
			}
			if strings.HasPrefix(key.Value, "x-google-") {
				continue
			}
			if !first {
				buf.WriteByte(',')
			}
			first = false
			k, _ := json.Marshal(key.Value)
			buf.Write(k)
			buf.WriteByte(':')
			if err := yamlToJSON(buf, value); err != nil {
				return err
			}
		}
		buf.WriteByte('}')
	case yaml.SequenceNode:
		buf.WriteByte('[')
		for i, item := range n.Content {
			if i > 0 {
				buf.WriteByte(',')
			}
			if err := yamlToJSON(buf, item); err != nil {
				return err
			}
		}
		buf.WriteByte(']')
	case yaml.ScalarNode:
		var v any
		if err := n.Decode(&v); err != nil {
			return fmt.Errorf("line %d: %w", n.Line, err)
		}
		b, err := json.Marshal(v)
		if err != nil {
			return fmt.Errorf("line %d: %w", n.Line, err)
		}
		buf.Write(b)
	default:
		return fmt.Errorf("line %d: unexpected YAML node", n.Line)
	}
	return nil
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
