package metrics

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Handler serves /metrics, /healthz (the process answers) and /readyz
// (Ready: driver, inventory, kubelet registration).
func (e *Exporter) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(e.reg, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		if err := e.Ready(); err != nil {
			http.Error(w, "not ready: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		if d := e.Degraded(); d != "" {
			fmt.Fprintln(w, "ok (degraded: "+d+")")
			return
		}
		fmt.Fprintln(w, "ok")
	})
	return mux
}

// Listen binds addr for Serve, so that a taken port is an error at start
// rather than later.
func Listen(addr string) (net.Listener, error) {
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("metrics address %s: %w", addr, err)
	}
	return lis, nil
}

// Serve serves Handler on lis until ctx ends, then shuts the server down
// and returns once it has stopped. A server that fails is logged, not
// fatal: gpulet serves the kubelet without it.
func (e *Exporter) Serve(ctx context.Context, lis net.Listener) error {
	srv := &http.Server{Handler: e.Handler(), ReadHeaderTimeout: 5 * time.Second}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(lis) }()
	e.opts.Log.Info("serving metrics and probes", "address", lis.Addr().String(), "paths", "/metrics /healthz /readyz")
	select {
	case err := <-served:
		e.opts.Log.Error("metrics server stopped", "err", err)
		return nil
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		srv.Close()
	}
	if err := <-served; err != nil && !errors.Is(err, http.ErrServerClosed) {
		e.opts.Log.Error("metrics server stopped", "err", err)
	}
	return nil
}
