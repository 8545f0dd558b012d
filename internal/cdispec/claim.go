package cdispec

// Per-claim specs for the DRA driver: one spec file per prepared
// ResourceClaim, named after the claim's UID, holding only that claim's
// devices. Kept apart from the node-wide spec so a claim's names never
// outlive it and are never reused (runtimes may cache specs).

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"

	"tags.cncf.io/container-device-interface/pkg/cdi"
	"tags.cncf.io/container-device-interface/pkg/parser"
	specs "tags.cncf.io/container-device-interface/specs-go"

	"github.com/gpulet/gpulet/internal/inventory"
)

// ClaimKind is the kind of the per-claim specs NVIDIA's DRA driver writes
// (k8s.<driver name>/claim); gpulet's DRA driver uses the same, so the CDI
// names a pod sees do not depend on which driver prepared it.
const ClaimKind = "k8s.gpu.nvidia.com/claim"

// ClaimDevice is one device of a claim: the CDI device name it gets and the
// GPU or MIG instance (by UUID) it stands for.
type ClaimDevice struct {
	Name string
	UUID string
	// Env ("KEY=value") and Mounts are added to the device's edits: what a
	// claim's sharing needs (MPS: the pipe folder and /dev/shm).
	Env    []string
	Mounts []*specs.Mount
}

// BuildClaim returns the spec of one claim's devices: for each, its
// /dev/nvidiaN (and a MIG instance's capability nodes), plus the node-wide
// control devices and driver files as Build gives every container. The
// spec is validated as the CDI library would load it.
func BuildClaim(node *inventory.Node, o Options, devices []ClaimDevice) (*specs.Spec, error) {
	if len(devices) == 0 {
		return nil, errors.New("a claim spec needs at least one device")
	}
	raw := &specs.Spec{Kind: o.Kind}
	for _, d := range devices {
		nodes, err := deviceNodes(node, o, d.UUID)
		if err != nil {
			return nil, err
		}
		raw.Devices = append(raw.Devices, specs.Device{Name: d.Name,
			ContainerEdits: specs.ContainerEdits{DeviceNodes: nodes, Hooks: deviceHooks(o, driverRoot(o), d.UUID), Env: d.Env, Mounts: d.Mounts}})
	}
	return finish(raw, node, o)
}

// deviceNodes are the device nodes of the GPU or MIG instance uuid.
func deviceNodes(node *inventory.Node, o Options, uuid string) ([]*specs.DeviceNode, error) {
	for _, g := range node.GPUs {
		gpu := devNode(node.DevRoot, "nvidia"+strconv.Itoa(g.Minor))
		if g.UUID == uuid {
			return []*specs.DeviceNode{gpu}, nil
		}
		for _, m := range g.MIGDevices {
			if m.UUID == uuid {
				return migNodes(node.DevRoot, o.MIGMinors, o.CapsMajor, g, m)
			}
		}
	}
	return nil, fmt.Errorf("device %s is not on this node", uuid)
}

// ClaimSpecFile is the file name of a claim's spec: the CDI library's
// transient name (<vendor>-<class>_<claim UID>), as NVIDIA's driver names it.
func ClaimSpecFile(kind, claimUID string) string {
	vendor, class := parser.ParseQualifier(kind)
	return cdi.GenerateTransientSpecName(vendor, class, claimUID) + ".json"
}

// ClaimDeviceID is the fully qualified CDI name of a claim's device.
func ClaimDeviceID(kind, name string) string {
	vendor, class := parser.ParseQualifier(kind)
	return parser.QualifiedName(vendor, class, name)
}

// WriteClaim builds the spec of a claim's devices with the writer's options
// (Options.Kind should be ClaimKind) and writes it atomically as
// ClaimSpecFile in the writer's folder. It returns the file's path.
func (w *Writer) WriteClaim(node *inventory.Node, claimUID string, devices []ClaimDevice) (string, error) {
	o, err := w.resolve(node)
	if err != nil {
		return "", err
	}
	raw, err := BuildClaim(node, o, devices)
	if err != nil {
		return "", fmt.Errorf("build CDI spec of claim %s: %w", claimUID, err)
	}
	if err := os.MkdirAll(w.Dir, 0o755); err != nil {
		return "", fmt.Errorf("create CDI spec folder: %w; pass --cdi-spec-dir to write elsewhere", err)
	}
	path := filepath.Join(w.Dir, ClaimSpecFile(raw.Kind, claimUID))
	if err := writeSpec(path, raw); err != nil {
		return "", err
	}
	return path, nil
}

// RemoveClaim deletes a claim's spec; a spec already gone is no error.
func (w *Writer) RemoveClaim(claimUID string) error {
	path := filepath.Join(w.Dir, ClaimSpecFile(w.Options.Kind, claimUID))
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove CDI spec %s: %w", path, err)
	}
	return nil
}
