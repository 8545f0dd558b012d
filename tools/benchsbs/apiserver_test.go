package main

import (
	"bufio"
	"context"
	"encoding/json"
	"net/http"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestMergePatch(t *testing.T) {
	for _, tc := range []struct{ target, patch, want string }{
		{`{"a":1,"b":{"c":2,"d":3}}`, `{"b":{"c":null,"e":4}}`, `{"a":1,"b":{"d":3,"e":4}}`},
		{`{"a":1}`, `{"a":{"x":"y"}}`, `{"a":{"x":"y"}}`},
		{`{"a":[1,2]}`, `{"a":[3]}`, `{"a":[3]}`},
	} {
		var target, patch, want any
		for _, d := range []struct {
			s string
			v *any
		}{{tc.target, &target}, {tc.patch, &patch}, {tc.want, &want}} {
			if err := json.Unmarshal([]byte(d.s), d.v); err != nil {
				t.Fatal(err)
			}
		}
		if got := mergePatch(target, patch); !reflect.DeepEqual(got, want) {
			t.Errorf("mergePatch(%s, %s) = %v, want %s", tc.target, tc.patch, got, tc.want)
		}
	}
}

// TestFakeAPIServesWhatGpuletAsks: the fake answers the Node GET and merge
// PATCH, and a ResourceSlice create shows up in a list and, as an ADDED
// event, in a watch-list that first ends its initial events with the
// bookmark client-go waits for; anything else is 404 and recorded.
func TestFakeAPIServesWhatGpuletAsks(t *testing.T) {
	f := newFakeAPI("n1")
	defer f.Close()
	c := f.srv.Client()
	do := func(method, path, body string) *http.Response {
		t.Helper()
		req, err := http.NewRequest(method, f.srv.URL+path, strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Content-Type", "application/json")
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		return resp
	}
	resp := do(http.MethodPatch, "/api/v1/nodes/n1", `{"metadata":{"labels":{"nvidia.com/gpu.count":"8"}}}`)
	var node map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&node); err != nil || resp.StatusCode != 200 {
		t.Fatalf("PATCH node: %s %v", resp.Status, err)
	}
	resp.Body.Close()
	if l := node["metadata"].(map[string]any)["labels"].(map[string]any); l["nvidia.com/gpu.count"] != "8" || l["kubernetes.io/hostname"] != "n1" {
		t.Errorf("labels after the patch: %v", l)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, f.srv.URL+sliceBase+"?watch=true&sendInitialEvents=true", nil)
	w, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Body.Close()
	events := bufio.NewScanner(w.Body)
	next := func() (typ string, obj map[string]any) {
		t.Helper()
		if !events.Scan() {
			t.Fatalf("watch ended: %v", events.Err())
		}
		var e struct {
			Type   string
			Object map[string]any
		}
		if err := json.Unmarshal(events.Bytes(), &e); err != nil {
			t.Fatal(err)
		}
		return e.Type, e.Object
	}
	if typ, obj := next(); typ != "BOOKMARK" || !strings.Contains(mustJSON(obj), `"k8s.io/initial-events-end":"true"`) {
		t.Fatalf("first event %s %v, want the initial-events-end bookmark", typ, obj)
	}
	resp = do(http.MethodPost, sliceBase, `{"metadata":{"generateName":"n1-gpu.nvidia.com-"},"spec":{"nodeName":"n1"}}`)
	resp.Body.Close()
	if resp.StatusCode != 201 {
		t.Fatalf("POST slice: %s", resp.Status)
	}
	if typ, obj := next(); typ != "ADDED" || !strings.HasPrefix(obj["metadata"].(map[string]any)["name"].(string), "n1-gpu.nvidia.com-") {
		t.Errorf("event %s %v, want the slice ADDED", typ, obj)
	}
	resp = do(http.MethodGet, sliceBase, "")
	var list struct{ Items []any }
	if err := json.NewDecoder(resp.Body).Decode(&list); err != nil || len(list.Items) != 1 {
		t.Errorf("list: %v, %d items, want 1", err, len(list.Items))
	}
	resp.Body.Close()
	resp = do(http.MethodGet, "/api/v1/pods", "")
	resp.Body.Close()
	patched, sliced, unknown := f.times()
	if resp.StatusCode != 404 || len(unknown) != 1 || patched.IsZero() || sliced.IsZero() {
		t.Errorf("GET pods %s, unknown %v, first patch %v, first slice %v", resp.Status, unknown, patched, sliced)
	}
}

func mustJSON(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}
