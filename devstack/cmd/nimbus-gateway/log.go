package main

import (
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"
)

// jsonLogger writes Cloud Logging style JSON lines, one Write per line.
type jsonLogger struct {
	mu  sync.Mutex
	out io.Writer
}

func newJSONLogger(out io.Writer) *jsonLogger { return &jsonLogger{out: out} }

var lineBuffers = sync.Pool{New: func() any { b := make([]byte, 0, 512); return &b }}

func (l *jsonLogger) write(b []byte) {
	l.mu.Lock()
	_, _ = l.out.Write(b)
	l.mu.Unlock()
}

// line logs {"severity": severity, "message": message}.
func (l *jsonLogger) line(severity, message string) {
	bp := lineBuffers.Get().(*[]byte)
	b := append((*bp)[:0], `{"severity":`...)
	b = appendJSONString(b, severity)
	b = append(b, `,"message":`...)
	b = appendJSONString(b, message)
	b = append(b, "}\n"...)
	l.write(b)
	*bp = b
	lineBuffers.Put(bp)
}

// writer adapts the logger for log.Logger users (http.Server, ReverseProxy).
func (l *jsonLogger) writer(severity string) io.Writer {
	return logWriter{l: l, severity: severity}
}

type logWriter struct {
	l        *jsonLogger
	severity string
}

func (w logWriter) Write(p []byte) (int, error) {
	w.l.line(w.severity, strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// statusRecorder remembers what was answered, for the access log.
type statusRecorder struct {
	http.ResponseWriter
	status int
	size   int64
	err    error // set by the proxy's error handler
}

func (r *statusRecorder) WriteHeader(code int) {
	if r.status == 0 && code >= 200 {
		r.status = code
	}
	r.ResponseWriter.WriteHeader(code)
}

func (r *statusRecorder) Write(p []byte) (int, error) {
	if r.status == 0 {
		r.status = http.StatusOK
	}
	n, err := r.ResponseWriter.Write(p)
	r.size += int64(n)
	return n, err
}

func (r *statusRecorder) Flush() {
	if f, ok := r.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// Unwrap lets http.ResponseController reach the connection's writer.
func (r *statusRecorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }

// withAccessLog logs one line per request:
//
//	{"severity":"INFO","message":"GET /v1/batch/<id> 200","httpRequest":{...,"latency":"0.003000s"}}
func (g *gateway) withAccessLog(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		rec := &statusRecorder{ResponseWriter: w}
		// Deferred so a request the proxy aborts (panic ErrAbortHandler) is logged too.
		defer func() { g.log.access(r, rec, time.Since(start)) }()
		next.ServeHTTP(rec, r)
	})
}

func (l *jsonLogger) access(r *http.Request, rec *statusRecorder, latency time.Duration) {
	status := rec.status
	if status == 0 {
		status = http.StatusOK // nothing written: net/http answers 200
	}
	severity := "INFO"
	switch {
	case status >= 500:
		severity = "ERROR"
	case status >= 400:
		severity = "WARNING"
	}
	uri := r.RequestURI
	if uri == "" {
		uri = r.URL.RequestURI()
	}
	path := uri
	if i := strings.IndexByte(path, '?'); i >= 0 {
		path = path[:i]
	}

	bp := lineBuffers.Get().(*[]byte)
	b := append((*bp)[:0], `{"severity":"`...)
	b = append(b, severity...)
	b = append(b, `","message":`...)
	msg := r.Method + " " + path + " " + strconv.Itoa(status)
	if rec.err != nil {
		msg += " (" + rec.err.Error() + ")"
	}
	b = appendJSONString(b, msg)
	b = append(b, `,"httpRequest":{"requestMethod":`...)
	b = appendJSONString(b, r.Method)
	b = append(b, `,"requestUrl":`...)
	b = appendJSONString(b, uri)
	b = append(b, `,"status":`...)
	b = strconv.AppendInt(b, int64(status), 10)
	b = append(b, `,"responseSize":"`...)
	b = strconv.AppendInt(b, rec.size, 10)
	b = append(b, `","userAgent":`...)
	b = appendJSONString(b, r.UserAgent())
	b = append(b, `,"remoteIp":`...)
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		host = r.RemoteAddr
	}
	b = appendJSONString(b, host)
	b = append(b, `,"protocol":`...)
	b = appendJSONString(b, r.Proto)
	b = append(b, `,"latency":"`...)
	b = strconv.AppendFloat(b, latency.Seconds(), 'f', 6, 64)
	b = append(b, "s\"}}\n"...)
	l.write(b)
	*bp = b
	lineBuffers.Put(bp)
}

const hexDigits = "0123456789abcdef"

// appendJSONString appends s as a JSON string literal; invalid UTF-8 becomes U+FFFD.
func appendJSONString(b []byte, s string) []byte {
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
			i++
			start = i
			continue
		}
		i += size
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}
