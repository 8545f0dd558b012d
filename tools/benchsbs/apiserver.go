package main

import (
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"k8s.io/client-go/kubernetes/scheme"
)

// fakeAPI is the least of a Kubernetes API server that gpulet's full mode
// needs without a cluster: the Node (GET, merge PATCH) and ResourceSlices
// (list, watch, create, update, delete) in JSON. It records when the first
// label patch and the first slice arrived. Anything else is answered 404
// and counted, so a run says if gpulet asked for more.
type fakeAPI struct {
	srv  *httptest.Server
	node string

	mu         sync.Mutex
	rv         int
	nodeObj    map[string]any
	slices     map[string]map[string]any
	watchers   map[chan []byte]struct{}
	firstPatch time.Time
	firstSlice time.Time
	unknown    []string
}

const sliceBase = "/apis/resource.k8s.io/v1/resourceslices"

func newFakeAPI(node string) *fakeAPI {
	f := &fakeAPI{node: node, slices: map[string]map[string]any{}, watchers: map[chan []byte]struct{}{}}
	f.rv = 1
	f.nodeObj = map[string]any{"apiVersion": "v1", "kind": "Node", "metadata": map[string]any{
		"name": node, "uid": "00000000-0000-0000-0000-00000000b0de", "resourceVersion": "1",
		"labels": map[string]any{"kubernetes.io/hostname": node}, "annotations": map[string]any{}}}
	f.srv = httptest.NewTLSServer(http.HandlerFunc(f.serve))
	return f
}

func (f *fakeAPI) Close() { f.srv.Close() }

// writeSecrets writes the in-cluster credentials for the fake (token,
// ca.crt, namespace) into dir and returns the env that points at it.
func (f *fakeAPI) writeSecrets(dir string) ([]string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	ca := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: f.srv.Certificate().Raw})
	for name, b := range map[string][]byte{"token": []byte("bench"), "ca.crt": ca, "namespace": []byte("gpulet")} {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
			return nil, err
		}
	}
	hostport := strings.TrimPrefix(f.srv.URL, "https://")
	i := strings.LastIndex(hostport, ":")
	return []string{"KUBERNETES_SERVICE_HOST=" + hostport[:i], "KUBERNETES_SERVICE_PORT=" + hostport[i+1:]}, nil
}

func (f *fakeAPI) times() (patch, slice time.Time, unknown []string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.firstPatch, f.firstSlice, append([]string(nil), f.unknown...)
}

func (f *fakeAPI) nextRV() string { f.rv++; return strconv.Itoa(f.rv) }

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

func status(code int, reason, msg string) map[string]any {
	return map[string]any{"apiVersion": "v1", "kind": "Status", "status": "Failure", "code": code, "reason": reason, "message": msg}
}

func (f *fakeAPI) serve(w http.ResponseWriter, r *http.Request) {
	nodePath := "/api/v1/nodes/" + f.node
	switch {
	case r.URL.Path == nodePath && r.Method == http.MethodGet:
		f.mu.Lock()
		b, _ := json.Marshal(f.nodeObj)
		f.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(b)
	case r.URL.Path == nodePath && r.Method == http.MethodPatch:
		var patch map[string]any
		if err := json.NewDecoder(r.Body).Decode(&patch); err != nil {
			writeJSON(w, 400, status(400, "BadRequest", err.Error()))
			return
		}
		f.mu.Lock()
		if f.firstPatch.IsZero() {
			f.firstPatch = time.Now()
		}
		f.nodeObj = mergePatch(f.nodeObj, patch).(map[string]any)
		f.nodeObj["metadata"].(map[string]any)["resourceVersion"] = f.nextRV()
		b, _ := json.Marshal(f.nodeObj)
		f.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(b)
	case r.URL.Path == sliceBase || strings.HasPrefix(r.URL.Path, sliceBase+"/"):
		f.serveSlices(w, r)
	default:
		f.mu.Lock()
		f.unknown = append(f.unknown, r.Method+" "+r.URL.RequestURI())
		f.mu.Unlock()
		writeJSON(w, 404, status(404, "NotFound", "the bench's fake API server does not serve "+r.URL.Path))
	}
}

func (f *fakeAPI) serveSlices(w http.ResponseWriter, r *http.Request) {
	name := strings.TrimPrefix(strings.TrimPrefix(r.URL.Path, sliceBase), "/")
	switch {
	case name == "" && r.Method == http.MethodGet && r.URL.Query().Get("watch") == "true":
		f.watch(w, r)
	case name == "" && r.Method == http.MethodGet:
		f.mu.Lock()
		items := []any{}
		for _, s := range f.slices {
			items = append(items, s)
		}
		list := map[string]any{"apiVersion": "resource.k8s.io/v1", "kind": "ResourceSliceList",
			"metadata": map[string]any{"resourceVersion": strconv.Itoa(f.rv)}, "items": items}
		f.mu.Unlock()
		writeJSON(w, 200, list)
	case name == "" && r.Method == http.MethodPost, name != "" && r.Method == http.MethodPut:
		obj, err := decodeBody(r)
		if err != nil {
			writeJSON(w, 400, status(400, "BadRequest", err.Error()))
			return
		}
		meta, _ := obj["metadata"].(map[string]any)
		if meta == nil {
			meta = map[string]any{}
			obj["metadata"] = meta
		}
		f.mu.Lock()
		event := "MODIFIED"
		if r.Method == http.MethodPost {
			event = "ADDED"
			if n, _ := meta["name"].(string); n == "" {
				gen, _ := meta["generateName"].(string)
				meta["name"] = gen + strconv.Itoa(f.rv)
			}
			meta["uid"] = fmt.Sprintf("00000000-0000-0000-0000-%012d", f.rv)
			meta["creationTimestamp"] = time.Now().UTC().Format(time.RFC3339)
			if f.firstSlice.IsZero() {
				f.firstSlice = time.Now()
			}
		}
		meta["resourceVersion"] = f.nextRV()
		obj["apiVersion"], obj["kind"] = "resource.k8s.io/v1", "ResourceSlice"
		f.slices[meta["name"].(string)] = obj
		f.notify(event, obj)
		f.mu.Unlock()
		code := 200
		if r.Method == http.MethodPost {
			code = 201
		}
		writeJSON(w, code, obj)
	case r.Method == http.MethodDelete:
		f.mu.Lock()
		for n, s := range f.slices {
			if name == "" || n == name {
				delete(f.slices, n)
				f.notify("DELETED", s)
			}
		}
		f.mu.Unlock()
		writeJSON(w, 200, map[string]any{"apiVersion": "v1", "kind": "Status", "status": "Success"})
	default:
		writeJSON(w, 405, status(405, "MethodNotAllowed", r.Method))
	}
}

// notify sends an event to every watcher; f.mu is held.
func (f *fakeAPI) notify(typ string, obj map[string]any) {
	b, _ := json.Marshal(map[string]any{"type": typ, "object": obj})
	for c := range f.watchers {
		select {
		case c <- b:
		default: // a watcher that does not read loses the event, as a slow client would be cut off
		}
	}
}

// watch streams events until the client goes. With sendInitialEvents (the
// watch-list a newer client-go asks for) it first sends the current
// objects and the bookmark that ends them.
func (f *fakeAPI) watch(w http.ResponseWriter, r *http.Request) {
	c := make(chan []byte, 64)
	f.mu.Lock()
	var initial [][]byte
	if r.URL.Query().Get("sendInitialEvents") == "true" {
		for _, s := range f.slices {
			b, _ := json.Marshal(map[string]any{"type": "ADDED", "object": s})
			initial = append(initial, b)
		}
		b, _ := json.Marshal(map[string]any{"type": "BOOKMARK", "object": map[string]any{
			"apiVersion": "resource.k8s.io/v1", "kind": "ResourceSlice",
			"metadata": map[string]any{"resourceVersion": strconv.Itoa(f.rv),
				"annotations": map[string]any{"k8s.io/initial-events-end": "true"}}}})
		initial = append(initial, b)
	}
	f.watchers[c] = struct{}{}
	f.mu.Unlock()
	defer func() {
		f.mu.Lock()
		delete(f.watchers, c)
		f.mu.Unlock()
	}()
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(200)
	fl, _ := w.(http.Flusher)
	send := func(b []byte) bool {
		if _, err := w.Write(append(b, '\n')); err != nil {
			return false
		}
		if fl != nil {
			fl.Flush()
		}
		return true
	}
	for _, b := range initial {
		if !send(b) {
			return
		}
	}
	if fl != nil {
		fl.Flush()
	}
	for {
		select {
		case <-r.Context().Done():
			return
		case b := <-c:
			if !send(b) {
				return
			}
		}
	}
}

// decodeBody reads a request's object as JSON: the DRA helper sends its
// ResourceSlices as protobuf, decoded with client-go's scheme.
func decodeBody(r *http.Request) (map[string]any, error) {
	b, err := io.ReadAll(r.Body)
	if err != nil {
		return nil, err
	}
	if strings.Contains(r.Header.Get("Content-Type"), "protobuf") {
		o, _, err := scheme.Codecs.UniversalDeserializer().Decode(b, nil, nil)
		if err != nil {
			return nil, err
		}
		if b, err = json.Marshal(o); err != nil {
			return nil, err
		}
	}
	var obj map[string]any
	return obj, json.Unmarshal(b, &obj)
}

// mergePatch applies an RFC 7386 JSON merge patch.
func mergePatch(target, patch any) any {
	p, ok := patch.(map[string]any)
	if !ok {
		return patch
	}
	t, ok := target.(map[string]any)
	if !ok {
		t = map[string]any{}
	}
	for k, v := range p {
		if v == nil {
			delete(t, k)
			continue
		}
		t[k] = mergePatch(t[k], v)
	}
	return t
}
