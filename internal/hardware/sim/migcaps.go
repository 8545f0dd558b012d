package sim

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"

	"github.com/gpulet/gpulet/internal/cdispec"
	"github.com/gpulet/gpulet/internal/inventory"
)

// capsMajor is the nvidia-caps major of the H200 fixture; the kernel
// assigns it at load time, so real nodes may differ.
const capsMajor = 241

// MIGMinorsPath is the simulator's /proc/driver/nvidia-caps/mig-minors.
func (b *Backend) MIGMinorsPath() string { return migMinorsPath(b.root) }

func migMinorsPath(root string) string {
	return filepath.Join(root, "proc", "driver", "nvidia-caps", "mig-minors")
}

// createMIGCaps writes the mig-minors file the driver would for the
// profile's GPUs and the /dev/nvidia-caps nodes its MIG instances need,
// and those of every instance dynamic MIG may create on a GPU the
// simulator has a MIG table for (plus config and monitor, which a real
// node has too).
func createMIGCaps(root string, node *inventory.Node) error {
	maxMinor := -1
	for _, g := range node.GPUs {
		maxMinor = max(maxMinor, g.Minor)
	}
	var buf bytes.Buffer
	if err := cdispec.FormatMIGMinors(&buf, maxMinor+1); err != nil {
		return err
	}
	p := migMinorsPath(root)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return fmt.Errorf("create simulated mig-minors: %w", err)
	}
	if err := os.WriteFile(p, buf.Bytes(), 0o444); err != nil && !errors.Is(err, os.ErrPermission) {
		return fmt.Errorf("create simulated mig-minors: %w", err)
	}
	minors, err := cdispec.ParseMIGMinors(&buf)
	if err != nil {
		return err
	}
	want := []int{minors["config"], minors["monitor"]}
	for _, g := range node.GPUs {
		for _, m := range g.MIGDevices {
			want = append(want, minors[cdispec.GICap(g.Minor, m.GI)], minors[cdispec.CICap(g.Minor, m.GI, m.CI)])
		}
		// Every instance dynamic MIG may cut (dynmig.go): its nodes exist
		// before the daemon, which may not mknod, needs them.
		if g.MIGCapable && migTableFor(g.Name, g.MemoryBytes>>20) != nil {
			for gi := giID(8, 0); gi <= giID(1, 6); gi++ {
				want = append(want, minors[cdispec.GICap(g.Minor, gi)], minors[cdispec.CICap(g.Minor, gi, 0)])
			}
		}
	}
	dir := filepath.Join(node.DevRoot, "nvidia-caps")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("create simulated /dev/nvidia-caps: %w", err)
	}
	for _, minor := range want {
		if err := mkchar(filepath.Join(dir, fmt.Sprintf("nvidia-cap%d", minor)), capsMajor, uint32(minor)); err != nil {
			return err
		}
	}
	return nil
}

// mkchar makes a character device, or a plain file where mknod is not
// allowed; an existing node stays.
func mkchar(p string, major, minor uint32) error {
	if _, err := os.Lstat(p); err == nil {
		return nil
	}
	err := unix.Mknod(p, unix.S_IFCHR|0o444, int(unix.Mkdev(major, minor)))
	if errors.Is(err, unix.EPERM) || errors.Is(err, unix.EACCES) {
		err = os.WriteFile(p, nil, 0o444)
	}
	if err != nil {
		return fmt.Errorf("create simulated device %s: %w", p, err)
	}
	return nil
}
