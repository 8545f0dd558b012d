package plugin

import (
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/gpulet/gpulet/internal/cdispec"
	"github.com/gpulet/gpulet/internal/resources"
)

// migCaps lists the /dev/nvidia-caps nodes (relative to the device root)
// of the MIG instances among devs: each one's GPU-instance and
// compute-instance access capability, resolved through the driver's
// mig-minors file. It is read per allocation, as NVIDIA's plugin does, so
// a driver reload needs no restart.
func (o *Options) migCaps(devs []resources.Device) ([]string, error) {
	path := o.MIGMinorsPath
	if path == "" {
		path = cdispec.DefaultMIGMinorsPath
	}
	var minors cdispec.MIGMinors
	var out []string
	seen := map[string]bool{}
	for _, d := range devs {
		if !d.MIG {
			continue
		}
		if minors == nil {
			m, err := cdispec.ReadMIGMinors(path)
			if err != nil {
				return nil, status.Errorf(codes.Internal, "MIG device %s needs its /dev/nvidia-caps nodes: %v", d.UUID, err)
			}
			minors = m
		}
		caps, err := minors.CapNodes(d.Minor, d.GI, d.CI)
		if err != nil {
			return nil, status.Errorf(codes.Internal, "MIG device %s (GI %d, CI %d on /dev/nvidia%d): %v (%s)",
				d.UUID, d.GI, d.CI, d.Minor, err, path)
		}
		for _, c := range caps {
			if !seen[c] {
				seen[c] = true
				out = append(out, c)
			}
		}
	}
	return out, nil
}
