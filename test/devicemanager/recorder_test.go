package devicemanager_test

import (
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/go-logr/logr"
)

// entry is one recorded log line: the kubelet's structured logs (through a
// logr sink) or one line of gpulet's stderr.
type entry struct {
	at    time.Time
	level int
	name  string
	msg   string
	err   error
	kv    map[string]any
}

func (e entry) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s ", e.at.Format("15:04:05.000000"))
	if e.name != "" {
		b.WriteString(e.name + ": ")
	}
	b.WriteString(e.msg)
	if e.err != nil {
		fmt.Fprintf(&b, " err=%q", e.err.Error())
	}
	keys := make([]string, 0, len(e.kv))
	for k := range e.kv {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		fmt.Fprintf(&b, " %s=%v", k, e.kv[k])
	}
	return b.String()
}

// recorder keeps the most recent log entries in memory, so tests can assert
// on what the kubelet did (e.g. that it called GetPreferredAllocation) and
// print the logs when they fail.
type recorder struct {
	mu      sync.Mutex
	entries []entry
	dropped int // entries before entries[0]
}

const recorderKeep = 50000

func newRecorder() *recorder { return &recorder{} }

func (r *recorder) add(e entry) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.entries) >= recorderKeep {
		n := recorderKeep / 2
		r.entries = append(r.entries[:0:0], r.entries[n:]...)
		r.dropped += n
	}
	r.entries = append(r.entries, e)
}

// mark is a position to read entries from later.
func (r *recorder) mark() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.dropped + len(r.entries)
}

// since returns the entries recorded after mark.
func (r *recorder) since(mark int) []entry {
	r.mu.Lock()
	defer r.mu.Unlock()
	i := mark - r.dropped
	if i < 0 {
		i = 0
	}
	if i > len(r.entries) {
		return nil
	}
	return append([]entry(nil), r.entries[i:]...)
}

// find returns the entries after mark whose message contains msg and whose
// key/values include every pair of match.
func (r *recorder) find(mark int, msg string, match map[string]any) []entry {
	var out []entry
	for _, e := range r.since(mark) {
		if !strings.Contains(e.msg, msg) {
			continue
		}
		ok := true
		for k, v := range match {
			if fmt.Sprint(e.kv[k]) != fmt.Sprint(v) {
				ok = false
				break
			}
		}
		if ok {
			out = append(out, e)
		}
	}
	return out
}

// dump renders the entries after mark, at most max of the last ones.
func (r *recorder) dump(mark, max int) string {
	es := r.since(mark)
	var b strings.Builder
	if len(es) > max {
		fmt.Fprintf(&b, "  ... %d earlier lines left out\n", len(es)-max)
		es = es[len(es)-max:]
	}
	for _, e := range es {
		b.WriteString("  " + e.String() + "\n")
	}
	return b.String()
}

// logger is a logr.Logger that records into r, up to verbosity 4 (the
// kubelet logs GetPreferredAllocation calls at V(4)).
func (r *recorder) logger() logr.Logger { return logr.New(&sink{rec: r}) }

type sink struct {
	rec  *recorder
	name string
	kv   []any
}

const sinkVerbosity = 4

func (s *sink) Init(logr.RuntimeInfo)  {}
func (s *sink) Enabled(level int) bool { return level <= sinkVerbosity }

func (s *sink) Info(level int, msg string, kv ...any) {
	s.rec.add(entry{at: time.Now(), level: level, name: s.name, msg: msg, kv: kvMap(s.kv, kv)})
}

func (s *sink) Error(err error, msg string, kv ...any) {
	s.rec.add(entry{at: time.Now(), level: -1, name: s.name, msg: msg, err: err, kv: kvMap(s.kv, kv)})
}

func (s *sink) WithValues(kv ...any) logr.LogSink {
	return &sink{rec: s.rec, name: s.name, kv: append(append([]any(nil), s.kv...), kv...)}
}

func (s *sink) WithName(name string) logr.LogSink {
	n := name
	if s.name != "" {
		n = s.name + "/" + name
	}
	return &sink{rec: s.rec, name: n, kv: s.kv}
}

func kvMap(lists ...[]any) map[string]any {
	m := map[string]any{}
	for _, l := range lists {
		for i := 0; i+1 < len(l); i += 2 {
			m[fmt.Sprint(l[i])] = l[i+1]
		}
	}
	return m
}
