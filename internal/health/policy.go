// Package health decides what hardware events mean for a device and keeps
// the inventory's health current: the XID policy (data, not code), and the
// monitor that applies it and brings devices back when they recover.
package health

import (
	"fmt"
	"sort"
	"strconv"
	"strings"

	"github.com/gpulet/gpulet/internal/hardware"
)

// Action is what an event does to a device.
type Action string

const (
	// Ignore: the application caused it; the GPU is fine (e.g. XID 13, 31, 43).
	Ignore Action = "ignore"
	// Reset: the GPU needs a reset or reboot; it is unhealthy until it is
	// reset (the backend reports it healthy, or gpulet restarts).
	Reset Action = "reset"
	// Lost: the GPU fell off the bus; it is unhealthy until it reappears.
	Lost Action = "lost"
)

// Rule is one row of the XID table.
type Rule struct {
	Action      Action `json:"action"`
	Description string `json:"description"`
}

// DefaultXIDs is gpulet's XID table, derived from NVIDIA's public XID
// catalog. XIDs not listed here make a GPU unhealthy (Reset), as the catalog
// advises for unknown errors.
var DefaultXIDs = map[uint64]Rule{
	13:  {Ignore, "graphics engine exception (application error)"},
	31:  {Ignore, "GPU memory page fault (application error)"},
	43:  {Ignore, "GPU stopped processing (application channel reset)"},
	45:  {Ignore, "preemptive cleanup after earlier errors (application ended)"},
	68:  {Ignore, "video processor exception (application error)"},
	94:  {Ignore, "contained ECC error (only the running application was affected)"},
	109: {Ignore, "context switch timeout (application error)"},
	48:  {Reset, "double-bit ECC error"},
	61:  {Reset, "internal micro-controller breakpoint/warning"},
	62:  {Reset, "internal micro-controller halt"},
	63:  {Reset, "ECC page retirement or row remapping recording event"},
	64:  {Reset, "ECC page retirement or row remapping failure"},
	74:  {Reset, "NVLink error"},
	79:  {Lost, "GPU has fallen off the bus"},
	92:  {Reset, "high single-bit ECC error rate"},
	95:  {Reset, "uncontained ECC error"},
	119: {Reset, "GSP RPC timeout"},
	120: {Reset, "GSP error"},
	121: {Reset, "C2C link error"},
	140: {Reset, "unrecovered ECC error"},
}

// Policy maps events to actions.
type Policy struct {
	xids map[uint64]Rule
}

// NewPolicy returns the default policy with overrides applied (overrides
// win; a user can also turn an ignored XID into a reset or the reverse).
func NewPolicy(overrides map[uint64]Action) (*Policy, error) {
	xids := make(map[uint64]Rule, len(DefaultXIDs)+len(overrides))
	for k, v := range DefaultXIDs {
		xids[k] = v
	}
	for k, a := range overrides {
		switch a {
		case Ignore, Reset, Lost:
		default:
			return nil, fmt.Errorf("XID %d: unknown action %q (want ignore, reset or lost)", k, a)
		}
		r := xids[k]
		if r.Description == "" {
			r.Description = "configured by the user"
		}
		r.Action = a
		xids[k] = r
	}
	return &Policy{xids: xids}, nil
}

// Decision is what the policy made of one event.
type Decision struct {
	Action Action
	Reason string
}

// Decide classifies an event. EventHealthy and EventChanged are not
// faults; Decide reports them as Ignore.
func (p *Policy) Decide(ev hardware.Event) Decision {
	switch ev.Kind {
	case hardware.EventXID:
		r, ok := p.xids[ev.XID]
		if !ok {
			r = Rule{Reset, "XID not in the policy table"}
		}
		return Decision{r.Action, fmt.Sprintf("XID %d: %s", ev.XID, r.Description)}
	case hardware.EventECCDoubleBit:
		return Decision{Reset, "uncorrectable (double-bit) ECC error"}
	case hardware.EventRowRemapFailure:
		return Decision{Reset, "row remapping failure"}
	case hardware.EventUnhealthy:
		reason := ev.Reason
		if reason == "" {
			reason = "unhealthy"
		}
		return Decision{Reset, reason}
	}
	return Decision{Ignore, string(ev.Kind)}
}

// Table lists the policy's XIDs in order, for docs and `gpulet doctor`.
func (p *Policy) Table() []struct {
	XID uint64
	Rule
} {
	out := make([]struct {
		XID uint64
		Rule
	}, 0, len(p.xids))
	for k, v := range p.xids {
		out = append(out, struct {
			XID uint64
			Rule
		}{k, v})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].XID < out[j].XID })
	return out
}

// ParseXIDList reads a comma-separated XID list ("13,31, 43"), the form of
// NVIDIA's DP_DISABLE_HEALTHCHECKS. The words "all" and "xids" are reported
// through all=true.
func ParseXIDList(s string) (xids []uint64, all bool, err error) {
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		switch strings.ToLower(f) {
		case "":
			continue
		case "all", "xids":
			all = true
			continue
		}
		v, err := strconv.ParseUint(f, 10, 64)
		if err != nil {
			return nil, false, fmt.Errorf("%q is not an XID number (want e.g. \"13,31\" or \"all\")", f)
		}
		xids = append(xids, v)
	}
	return xids, all, nil
}
