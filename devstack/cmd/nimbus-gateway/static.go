package main

import (
	"embed"
	"mime"
	"net/http"
	"path"
	"strconv"
	"strings"
)

// The docs page (/docs) and the jobs page (/ui) are static files built into
// the binary: no CDN, no install step, they work offline.
//
//go:embed static
var staticFiles embed.FS

// page serves one embedded file at a fixed route.
func page(name string) func(*gateway, http.ResponseWriter, *http.Request) {
	return func(_ *gateway, w http.ResponseWriter, r *http.Request) { serveStatic(w, r, name) }
}

// uiAsset answers GET /ui/{file}: the jobs page's script and style.
func (g *gateway) uiAsset(w http.ResponseWriter, r *http.Request) {
	name := path.Base(r.URL.Path)
	if strings.HasPrefix(name, ".") || !strings.Contains(name, ".") {
		writeError(w, http.StatusNotFound, "not_found", "no file "+name+" under /ui/")
		return
	}
	serveStatic(w, r, name)
}

func serveStatic(w http.ResponseWriter, r *http.Request, name string) {
	b, err := staticFiles.ReadFile("static/" + name)
	if err != nil {
		writeError(w, http.StatusNotFound, "not_found", "no file "+name+" under /ui/")
		return
	}
	h := w.Header()
	ctype := mime.TypeByExtension(path.Ext(name))
	if ctype == "" {
		ctype = "application/octet-stream"
	}
	h.Set("Content-Type", ctype)
	h.Set("Content-Length", strconv.Itoa(len(b)))
	h.Set("Cache-Control", "no-cache")
	h.Set("X-Content-Type-Options", "nosniff")
	// Same-origin only: the pages talk to this gateway and nothing else.
	h.Set("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; style-src 'self'")
	w.WriteHeader(http.StatusOK)
	if r.Method != http.MethodHead {
		_, _ = w.Write(b)
	}
}
