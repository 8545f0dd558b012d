package cdispec

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// DefaultMIGMinorsPath is where the driver lists the minor numbers of its
// /dev/nvidia-caps nodes. It is kernel-wide, so a container sees the host's.
const DefaultMIGMinorsPath = "/proc/driver/nvidia-caps/mig-minors"

// MIGMinors maps a capability, as the driver names it in mig-minors
// ("gpu0/gi1/access", "gpu0/gi1/ci0/access", "config", "monitor"), to the
// minor N of its /dev/nvidia-caps/nvidia-capN node.
type MIGMinors map[string]int

// GICap names the access capability of GPU instance gi on the GPU whose
// device minor is gpuMinor (the N of /dev/nvidiaN, not its index).
func GICap(gpuMinor, gi int) string { return fmt.Sprintf("gpu%d/gi%d/access", gpuMinor, gi) }

// CICap names the access capability of compute instance ci of GPU instance gi.
func CICap(gpuMinor, gi, ci int) string {
	return fmt.Sprintf("gpu%d/gi%d/ci%d/access", gpuMinor, gi, ci)
}

// CapNodes are the /dev/nvidia-caps nodes, relative to the device root, of
// the MIG instance gi/ci on the GPU whose device minor is gpuMinor: its GPU
// instance's and its compute instance's access capability, as NVIDIA hands
// them to a container.
func (m MIGMinors) CapNodes(gpuMinor, gi, ci int) ([]string, error) {
	out := make([]string, 0, 2)
	for _, c := range []string{GICap(gpuMinor, gi), CICap(gpuMinor, gi, ci)} {
		n, ok := m[c]
		if !ok {
			return nil, fmt.Errorf("no %s in the driver's mig-minors", c)
		}
		out = append(out, filepath.Join("nvidia-caps", "nvidia-cap"+strconv.Itoa(n)))
	}
	return out, nil
}

// ReadMIGMinors reads a mig-minors file. A missing file is not an error: the
// driver only creates it when MIG is supported, and then no MIG device has
// caps to give.
func ReadMIGMinors(path string) (MIGMinors, error) {
	f, err := os.Open(path)
	if os.IsNotExist(err) {
		return MIGMinors{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read MIG capability minors: %w", err)
	}
	defer f.Close()
	m, err := ParseMIGMinors(f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return m, nil
}

// ParseMIGMinors reads lines of "<capability> <minor>". Unlike NVIDIA's
// reader, which skips lines it does not understand, it refuses them: a line
// it misread would hand a container another tenant's MIG instance.
func ParseMIGMinors(r io.Reader) (MIGMinors, error) {
	out := MIGMinors{}
	sc := bufio.NewScanner(r)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" {
			continue
		}
		fields := strings.Fields(line)
		if len(fields) != 2 {
			return nil, fmt.Errorf("line %d %q: want \"<capability> <minor>\"", n, line)
		}
		if !validCap(fields[0]) {
			return nil, fmt.Errorf("line %d: unknown capability %q", n, fields[0])
		}
		minor, err := strconv.Atoi(fields[1])
		if err != nil || minor < 0 {
			return nil, fmt.Errorf("line %d: minor %q is not a non-negative number", n, fields[1])
		}
		if _, dup := out[fields[0]]; dup {
			return nil, fmt.Errorf("line %d: capability %s is listed twice", n, fields[0])
		}
		out[fields[0]] = minor
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read MIG capability minors: %w", err)
	}
	return out, nil
}

// validCap accepts exactly the names GICap, CICap and the two node-wide
// capabilities produce, so a parsed name round-trips.
func validCap(s string) bool {
	if s == "config" || s == "monitor" {
		return true
	}
	parts := strings.Split(s, "/")
	if len(parts) < 3 || len(parts) > 4 || parts[len(parts)-1] != "access" {
		return false
	}
	nums := make([]int, 0, 3)
	for i, prefix := range []string{"gpu", "gi", "ci"}[:len(parts)-1] {
		v, ok := strings.CutPrefix(parts[i], prefix)
		if !ok {
			return false
		}
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 || strconv.Itoa(n) != v {
			return false
		}
		nums = append(nums, n)
	}
	if len(nums) == 2 {
		return GICap(nums[0], nums[1]) == s
	}
	return CICap(nums[0], nums[1], nums[2]) == s
}

// FormatMIGMinors writes the file the driver would for GPUs with device
// minors 0..gpus-1: config and monitor, then for every GPU 15 GPU instances
// of 8 compute instances each, numbered in that order from 3. The simulator
// uses it, so tests read what a real node holds.
func FormatMIGMinors(w io.Writer, gpus int) error {
	bw := bufio.NewWriter(w)
	fmt.Fprintf(bw, "config 1\nmonitor 2\n")
	minor := 3
	for g := 0; g < gpus; g++ {
		for gi := 0; gi < 15; gi++ {
			fmt.Fprintf(bw, "%s %d\n", GICap(g, gi), minor)
			minor++
			for ci := 0; ci < 8; ci++ {
				fmt.Fprintf(bw, "%s %d\n", CICap(g, gi, ci), minor)
				minor++
			}
		}
	}
	return bw.Flush()
}
