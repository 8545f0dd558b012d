package validate

import (
	"os"
	"sort"
	"strings"
)

// Environment variables validate reads and sets.
const (
	NvidiaVisibleDevices = "NVIDIA_VISIBLE_DEVICES"
	CUDAVisibleDevices   = "CUDA_VISIBLE_DEVICES"
)

// VolumeMountRoot is the folder the volume-mounts device-list strategy puts
// one file per device ID into (NVIDIA_VISIBLE_DEVICES then names the folder).
const VolumeMountRoot = "/var/run/nvidia-container-devices"

// EnvPlan is how validate reads the GPUs it was given from the environment
// and what it sets so that CUDA honours them.
//
// In a container the NVIDIA runtime (or CDI) already hides the other GPUs;
// run directly on a host, nothing does, so validate translates the
// plugin's NVIDIA_VISIBLE_DEVICES into CUDA_VISIBLE_DEVICES before cuInit.
// Only UUIDs are translated: device indices are renumbered inside a
// container, so the same index names a different GPU there.
type EnvPlan struct {
	// NvidiaVisible is NVIDIA_VISIBLE_DEVICES as found; NvidiaSet whether
	// it was set at all.
	NvidiaVisible string `json:"nvidiaVisibleDevices"`
	NvidiaSet     bool   `json:"nvidiaVisibleDevicesSet"`
	// CUDAVisible is CUDA_VISIBLE_DEVICES as found; CUDASet whether it was.
	CUDAVisible string `json:"cudaVisibleDevices"`
	CUDASet     bool   `json:"cudaVisibleDevicesSet"`
	// SetCUDAVisible is the CUDA_VISIBLE_DEVICES validate sets (Set says
	// whether it sets one; an empty value hides every GPU).
	SetCUDAVisible string `json:"setCudaVisibleDevices,omitempty"`
	Set            bool   `json:"setsCudaVisibleDevices"`
	// Expected are the device UUIDs CUDA must see, exactly; nil when the
	// environment names no UUIDs, and then any visible device is fine.
	Expected []string `json:"expected,omitempty"`
	// Note says in words what validate made of the environment.
	Note string `json:"note"`
}

// PlanEnv reads the environment through lookup; readDir lists the device
// IDs of the volume-mounts strategy (os.ReadDir's names in production).
func PlanEnv(lookup func(string) (string, bool), readDir func(string) ([]string, error)) EnvPlan {
	var p EnvPlan
	p.NvidiaVisible, p.NvidiaSet = lookup(NvidiaVisibleDevices)
	p.CUDAVisible, p.CUDASet = lookup(CUDAVisibleDevices)
	raw := strings.TrimSpace(p.NvidiaVisible)

	switch {
	case !p.NvidiaSet || raw == "":
		if p.CUDASet {
			p.Note = "NVIDIA_VISIBLE_DEVICES is not set; CUDA_VISIBLE_DEVICES=" + quote(p.CUDAVisible) + " is used as it is"
		} else {
			p.Note = "NVIDIA_VISIBLE_DEVICES is not set: validating every GPU this process can see"
		}
		return p
	case raw == "all":
		p.Note = "NVIDIA_VISIBLE_DEVICES=all: validating every GPU this process can see"
		return p
	case raw == "void":
		p.Note = "NVIDIA_VISIBLE_DEVICES=void: the devices were passed another way (CDI); validating every GPU this process can see"
		return p
	case raw == "none":
		p.Note = "NVIDIA_VISIBLE_DEVICES=none: no GPU was allocated to this process"
		if !p.CUDASet {
			p.Set, p.SetCUDAVisible = true, ""
			p.Note += "; CUDA_VISIBLE_DEVICES is set empty so CUDA sees none"
		}
		p.Expected = []string{}
		return p
	}

	var ids []string
	from := "NVIDIA_VISIBLE_DEVICES"
	if strings.HasPrefix(raw, "/") {
		// volume-mounts strategy: one entry per device in the named folder.
		from = "the device files in " + raw
		names, err := readDir(raw)
		if err != nil {
			p.Note = "NVIDIA_VISIBLE_DEVICES=" + raw + " names a folder of device files (volume-mounts strategy), but it cannot be read: " + err.Error() + "; validating every GPU this process can see"
			return p
		}
		sort.Strings(names)
		ids = names
	} else {
		for _, id := range strings.Split(raw, ",") {
			if id = strings.TrimSpace(id); id != "" {
				ids = append(ids, id)
			}
		}
	}
	if len(ids) == 0 {
		p.Note = from + " lists no device; validating every GPU this process can see"
		return p
	}
	for _, id := range ids {
		if !isUUID(id) {
			p.Note = from + " lists device indices (" + strings.Join(ids, ",") +
				"), which a container runtime renumbers; they are not passed to CUDA and not checked. Use --device-id-strategy=uuid, or set CUDA_VISIBLE_DEVICES yourself on a host"
			return p
		}
	}
	p.Expected = ids
	list := strings.Join(ids, ",")
	switch {
	case !p.CUDASet:
		p.Set, p.SetCUDAVisible = true, list
		p.Note = from + " lists " + list + "; CUDA_VISIBLE_DEVICES is set to the same UUIDs so CUDA sees exactly them, in a container or on a host"
	case sameList(p.CUDAVisible, list):
		p.Note = from + " lists " + list + "; CUDA_VISIBLE_DEVICES already names the same UUIDs"
	default:
		p.Expected = nil
		p.Note = from + " lists " + list + ", but CUDA_VISIBLE_DEVICES=" + quote(p.CUDAVisible) +
			" is set and wins: it is left as it is, and the devices CUDA sees are not checked against the list"
	}
	return p
}

// Apply sets what the plan sets (os.Setenv in production). It must run
// before cuInit.
func (p EnvPlan) Apply(setenv func(k, v string) error) error {
	if !p.Set {
		return nil
	}
	return setenv(CUDAVisibleDevices, p.SetCUDAVisible)
}

// ReadDeviceDir lists the device IDs of a volume-mounts folder.
func ReadDeviceDir(dir string) ([]string, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	names := make([]string, 0, len(entries))
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names, nil
}

// isUUID reports whether id is a GPU or MIG UUID as NVML prints them.
func isUUID(id string) bool {
	return strings.HasPrefix(id, "GPU-") || strings.HasPrefix(id, "MIG-")
}

func sameList(a, b string) bool {
	norm := func(s string) string {
		var out []string
		for _, x := range strings.Split(s, ",") {
			if x = strings.TrimSpace(x); x != "" {
				out = append(out, x)
			}
		}
		return strings.Join(out, ",")
	}
	return norm(a) == norm(b)
}

func quote(s string) string {
	if s == "" {
		return `""`
	}
	return s
}
