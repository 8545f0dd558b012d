//go:build !nokube

package main

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/kubernetes/scheme"

	"github.com/gpulet/gpulet/internal/daemon"
)

// TestNodeEventCommand: `gpulet node-event`, which the image's lean entry
// point runs to post a device-plugin conflict, creates the Warning Event on
// the Node through the API server of its kubeconfig.
func TestNodeEventCommand(t *testing.T) {
	posted := make(chan corev1.Event, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost || r.URL.Path != "/api/v1/namespaces/default/events" {
			http.Error(w, "unexpected "+r.Method+" "+r.URL.Path, http.StatusNotFound)
			return
		}
		body, _ := io.ReadAll(r.Body)
		obj, _, err := scheme.Codecs.UniversalDeserializer().Decode(body, nil, nil) // JSON or protobuf
		ev, ok := obj.(*corev1.Event)
		if err != nil || !ok {
			http.Error(w, fmt.Sprintf("not an Event: %v", err), http.StatusBadRequest)
			return
		}
		posted <- *ev
		w.Header().Set("Content-Type", r.Header.Get("Content-Type"))
		w.WriteHeader(http.StatusCreated)
		w.Write(body)
	}))
	defer srv.Close()
	kubeconfig := filepath.Join(t.TempDir(), "kubeconfig")
	if err := os.WriteFile(kubeconfig, []byte(`apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "`+srv.URL+`"}}]
contexts: [{name: c, context: {cluster: c, user: u}}]
users: [{name: u, user: {token: t}}]
current-context: c
`), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := gpulet(t, "node-event", "--kubeconfig="+kubeconfig, "--node-name=n1", "--message=another plugin serves nvidia.com/gpu")
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	ev := <-posted
	if ev.InvolvedObject.Kind != "Node" || ev.InvolvedObject.Name != "n1" || ev.Reason != daemon.ConflictEventReason ||
		ev.Type != corev1.EventTypeWarning || ev.Message != "another plugin serves nvidia.com/gpu" {
		t.Errorf("posted %+v", ev)
	}
	if out, err := gpulet(t, "node-event", "--node-name=n1"); err == nil {
		t.Errorf("node-event without --message: %s", out)
	}
}
