package plugin

import (
	"crypto/sha256"
	"fmt"
	"path/filepath"
	"sort"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"
	"tags.cncf.io/container-device-interface/pkg/cdi"

	"github.com/gpulet/gpulet/internal/resources"
)

// Device-list strategies, named as NVIDIA's plugin names them.
const (
	StrategyEnvvar         = "envvar"
	StrategyVolumeMounts   = "volume-mounts"
	StrategyCDIAnnotations = "cdi-annotations"
	StrategyCDICRI         = "cdi-cri"
)

// Device-ID strategies.
const (
	IDStrategyUUID  = "uuid"
	IDStrategyIndex = "index"
)

const (
	visibleDevicesEnv = "NVIDIA_VISIBLE_DEVICES"
	// volumeMountRoot is where nvidia-container-runtime looks for the
	// device list when it is passed as mounts (accept-nvidia-visible-devices-as-volume-mounts).
	volumeMountRoot = "/var/run/nvidia-container-devices"
	cdiPluginName   = "gpulet"
)

// ValidateStrategies checks a device-list and device-ID strategy in the
// words a user typed them.
func ValidateStrategies(list []string, id string) error {
	if len(list) == 0 {
		return fmt.Errorf("device-list-strategy is empty: give one or more of envvar, volume-mounts, cdi-annotations, cdi-cri")
	}
	seen := map[string]bool{}
	for _, s := range list {
		switch s {
		case StrategyEnvvar, StrategyVolumeMounts, StrategyCDIAnnotations, StrategyCDICRI:
		default:
			return fmt.Errorf("device-list-strategy %q is not one of envvar, volume-mounts, cdi-annotations, cdi-cri", s)
		}
		if seen[s] {
			return fmt.Errorf("device-list-strategy %q is given twice", s)
		}
		seen[s] = true
	}
	if id != IDStrategyUUID && id != IDStrategyIndex {
		return fmt.Errorf("device-id-strategy %q is not one of uuid, index", id)
	}
	return nil
}

// lookup resolves requested IDs, refusing unknown and unhealthy ones with
// InvalidArgument that names every bad ID.
func lookup(res *resources.Resource, ids []string) ([]resources.Device, error) {
	devs := make([]resources.Device, 0, len(ids))
	var unknown, unhealthy []string
	seen := make(map[string]bool, len(ids))
	for _, id := range ids {
		if seen[id] {
			return nil, status.Errorf(codes.InvalidArgument, "device %q is requested twice for one container", id)
		}
		seen[id] = true
		d, ok := res.Device(id)
		switch {
		case !ok:
			unknown = append(unknown, id)
		case !d.Healthy:
			unhealthy = append(unhealthy, fmt.Sprintf("%s (%s)", id, d.Reason))
		default:
			devs = append(devs, d)
		}
	}
	if len(unknown)+len(unhealthy) > 0 {
		var parts []string
		if len(unknown) > 0 {
			parts = append(parts, fmt.Sprintf("unknown %s devices: %s", res.Name, strings.Join(unknown, ", ")))
		}
		if len(unhealthy) > 0 {
			parts = append(parts, fmt.Sprintf("unhealthy %s devices: %s", res.Name, strings.Join(unhealthy, ", ")))
		}
		return nil, status.Error(codes.InvalidArgument, strings.Join(parts, "; "))
	}
	return devs, nil
}

// containerResponse is what one container gets for its devices.
func (o *Options) containerResponse(res *resources.Resource, devs []resources.Device) (*pluginapi.ContainerAllocateResponse, error) {
	// Replicas of one device share its UUID; a container sees it once.
	var ids []string
	seen := map[string]bool{}
	for _, d := range devs {
		id := d.UUID
		if o.DeviceIDStrategy == IDStrategyIndex {
			id = d.Index
		}
		if !seen[id] {
			seen[id] = true
			ids = append(ids, id)
		}
	}
	r := &pluginapi.ContainerAllocateResponse{}
	usesEnv := false
	for _, s := range o.DeviceListStrategies {
		switch s {
		case StrategyEnvvar:
			usesEnv = true
			setEnv(r, visibleDevicesEnv, strings.Join(ids, ","))
		case StrategyVolumeMounts:
			usesEnv = true
			setEnv(r, visibleDevicesEnv, volumeMountRoot)
			for _, id := range ids {
				r.Mounts = append(r.Mounts, &pluginapi.Mount{
					HostPath: "/dev/null", ContainerPath: filepath.Join(volumeMountRoot, id), ReadOnly: true,
				})
			}
		case StrategyCDIAnnotations:
			// The key must be unique per allocation but stable for a retry.
			sum := sha256.Sum256([]byte(strings.Join(ids, ",")))
			ann, err := cdi.UpdateAnnotations(map[string]string{}, cdiPluginName, fmt.Sprintf("%x", sum[:8]), o.cdiNames(ids))
			if err != nil {
				return nil, status.Errorf(codes.Internal, "build CDI annotations: %v", err)
			}
			r.Annotations = ann
		case StrategyCDICRI:
			for _, n := range o.cdiNames(ids) {
				r.CdiDevices = append(r.CdiDevices, &pluginapi.CDIDevice{Name: n})
			}
		}
	}
	if !usesEnv {
		// Keep a legacy runtime hook from exposing every GPU to an image
		// that sets NVIDIA_VISIBLE_DEVICES=all.
		setEnv(r, visibleDevicesEnv, "void")
	}
	// With only CDI strategies the CDI spec brings the device nodes; NVIDIA's
	// plugin then ignores passDeviceSpecs too, so the runtime is not given
	// each node twice.
	if o.PassDeviceSpecs && usesEnv {
		specs, err := o.deviceSpecs(res, devs)
		if err != nil {
			return nil, err
		}
		r.Devices = specs
	}
	return r, nil
}

func setEnv(r *pluginapi.ContainerAllocateResponse, k, v string) {
	if r.Envs == nil {
		r.Envs = map[string]string{}
	}
	r.Envs[k] = v
}

func (o *Options) cdiNames(ids []string) []string {
	kind := o.CDIKind
	if kind == "" {
		kind = DefaultCDIKind
	}
	out := make([]string, len(ids))
	for i, id := range ids {
		out[i] = kind + "=" + id
	}
	return out
}

// deviceSpecs lists the device nodes a container needs: the node-wide
// control devices, /dev/nvidiaN of each device's GPU and, for a MIG
// instance, the /dev/nvidia-caps nodes of its GPU and compute instance, as
// NVIDIA's plugin passes them. Without those a MIG instance cannot be
// opened, so a capability missing from mig-minors fails the allocation.
func (o *Options) deviceSpecs(res *resources.Resource, devs []resources.Device) ([]*pluginapi.DeviceSpec, error) {
	var names []string
	names = append(names, res.ControlDevices...)
	minors := map[int]bool{}
	var ms []int
	for _, d := range devs {
		if !minors[d.Minor] {
			minors[d.Minor] = true
			ms = append(ms, d.Minor)
		}
	}
	sort.Ints(ms)
	for _, m := range ms {
		names = append(names, fmt.Sprintf("nvidia%d", m))
	}
	caps, err := o.migCaps(devs)
	if err != nil {
		return nil, err
	}
	names = append(names, caps...)
	specs := make([]*pluginapi.DeviceSpec, len(names))
	for i, n := range names {
		specs[i] = &pluginapi.DeviceSpec{
			HostPath: filepath.Join(res.DevRoot, n), ContainerPath: "/dev/" + filepath.ToSlash(n), Permissions: "rw",
		}
	}
	return specs, nil
}
