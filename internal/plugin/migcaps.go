package plugin

import (
	"path/filepath"
	"strconv"

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
	seen := map[int]bool{}
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
		for _, c := range []string{cdispec.GICap(d.Minor, d.GI), cdispec.CICap(d.Minor, d.GI, d.CI)} {
			n, ok := minors[c]
			if !ok {
				return nil, status.Errorf(codes.Internal, "MIG device %s (GI %d, CI %d on /dev/nvidia%d): no %s in the driver's mig-minors (%s)",
					d.UUID, d.GI, d.CI, d.Minor, c, path)
			}
			if !seen[n] {
				seen[n] = true
				out = append(out, filepath.Join("nvidia-caps", "nvidia-cap"+strconv.Itoa(n)))
			}
		}
	}
	return out, nil
}
