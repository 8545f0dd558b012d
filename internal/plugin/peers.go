package plugin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"
)

// Peer is a socket in the kubelet's device-plugin folder that is neither the
// kubelet's nor gpulet's: another device plugin, live or left behind.
type Peer struct {
	// Socket is the file name, e.g. nvidia-gpu.sock.
	Socket string `json:"socket"`
	// Resource is the resource the socket's name says it serves (NVIDIA's
	// plugin names its sockets nvidia-<name>.sock for nvidia.com/<name>),
	// or "" when the name does not tell.
	Resource string `json:"resource,omitempty"`
	// Live is true when the socket answered GetDevicePluginOptions.
	Live bool `json:"live"`
	// Err says why it did not answer.
	Err string `json:"error,omitempty"`
}

func (p Peer) String() string {
	res := p.Resource
	if res == "" {
		res = "an unknown resource"
	}
	state := "answers"
	if !p.Live {
		state = "does not answer: " + p.Err
	}
	return fmt.Sprintf("%s (%s; %s)", p.Socket, res, state)
}

// kubeletCheckpoint is the device manager's checkpoint file in the plugin
// folder.
const kubeletCheckpoint = "kubelet_internal_checkpoint"

// ResourceOfSocket tells the resource a socket serves from its name, for
// the plugins whose naming is known: NVIDIA's (nvidia-<name>.sock serves
// nvidia.com/<name>). ok is false when the name does not tell.
func ResourceOfSocket(name string) (string, bool) {
	if n, found := strings.CutPrefix(name, "nvidia-"); found {
		if n, found = strings.CutSuffix(n, ".sock"); found && n != "" {
			return "nvidia.com/" + n, true
		}
	}
	return "", false
}

// IsOwnSocket reports whether a socket name is one gpulet serves.
func IsOwnSocket(name string) bool { return strings.HasPrefix(name, "gpulet-") }

// ScanPeers lists the sockets in dir that are not the kubelet's or gpulet's
// and asks each for its options (the one call that changes nothing in a
// plugin), each within timeout. Sorted by name.
func ScanPeers(ctx context.Context, dir string, timeout time.Duration) ([]Peer, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("read the device-plugin folder: %w", err)
	}
	var out []Peer
	for _, e := range ents {
		name := e.Name()
		if e.Type()&fs.ModeSocket == 0 || name == filepath.Base(pluginapi.KubeletSocket) || IsOwnSocket(name) {
			continue
		}
		p := Peer{Socket: name}
		p.Resource, _ = ResourceOfSocket(name)
		if err := probe(ctx, filepath.Join(dir, name), timeout); err != nil {
			p.Err = err.Error()
		} else {
			p.Live = true
		}
		out = append(out, p)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Socket < out[j].Socket })
	return out, nil
}

// probe calls GetDevicePluginOptions on a socket.
func probe(ctx context.Context, socket string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	conn, err := grpc.NewClient("unix://"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer conn.Close()
	_, err = pluginapi.NewDevicePluginClient(conn).GetDevicePluginOptions(ctx, &pluginapi.Empty{}, grpc.WaitForReady(false))
	if err != nil {
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			return fmt.Errorf("no answer within %v", timeout)
		}
		return errors.New(strings.TrimPrefix(err.Error(), "rpc error: "))
	}
	return nil
}

// RegisteredResources reads the kubelet's device-manager checkpoint in dir:
// the device IDs the kubelet last got for each registered resource, from
// whichever plugin sent them. A missing checkpoint is no error (nil map).
func RegisteredResources(dir string) (map[string][]string, error) {
	data, err := os.ReadFile(filepath.Join(dir, kubeletCheckpoint))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	// The checkpoint's JSON: {"Data": {"PodDeviceEntries": [...],
	// "RegisteredDevices": {"nvidia.com/gpu": ["GPU-...", ...]}}, "Checksum": N}.
	var cp struct {
		Data struct {
			RegisteredDevices map[string][]string
		}
	}
	if err := json.Unmarshal(data, &cp); err != nil {
		return nil, fmt.Errorf("%s: %w", kubeletCheckpoint, err)
	}
	return cp.Data.RegisteredDevices, nil
}

// Conflict is another registrant of a resource gpulet advertises.
type Conflict struct {
	Resource string
	// Endpoint names the other plugin: its socket, or what gpulet saw.
	Endpoint string
	// Signal is how gpulet knows: "socket", "checkpoint" or "stream-replaced".
	Signal string
	// TakingOver is true when gpulet registers anyway (take-over set).
	TakingOver bool
}

// Advice says what the operator can do about a conflict.
func (c *Conflict) Advice() string {
	return "remove the other device plugin's DaemonSet (on AKS GPU node images NVIDIA's plugin is built in: use it, or skip gpulet's device plugin there), " +
		"start gpulet with a different --resource-name, or set take-over (--take-over, GPULET_TAKE_OVER, Helm devicePlugin.takeOver) to migrate"
}

func (c *Conflict) String() string {
	verb := "gpulet holds back and does not register it"
	if c.TakingOver {
		verb = "take-over is set: gpulet registers it anyway"
	}
	return fmt.Sprintf("%s is also served by %s (seen by %s); %s", c.Resource, c.Endpoint, c.Signal, verb)
}

// findConflict looks for another live endpoint serving the resource: a
// socket whose name says so, or, when the kubelet dropped our stream
// (replaced), any live socket the name of which does not tell; the
// checkpoint adds an endpoint that registered the resource with device IDs
// other than ours.
func (s *Server) findConflict(ctx context.Context, replaced bool) *Conflict {
	peers, err := ScanPeers(ctx, s.opts.PluginDir, time.Second)
	if err != nil {
		s.log.Debug("cannot look for other device plugins", "err", err)
	}
	var unknown []string
	for _, p := range peers {
		if !p.Live {
			continue
		}
		if p.Resource == s.name {
			return &Conflict{Resource: s.name, Endpoint: p.Socket, Signal: "socket"}
		}
		if p.Resource == "" {
			unknown = append(unknown, p.Socket)
		}
	}
	reg, err := RegisteredResources(s.opts.PluginDir)
	if err != nil {
		s.log.Debug("cannot read the kubelet's checkpoint", "err", err)
	}
	if ids, ok := reg[s.name]; ok && len(unknown) > 0 && !s.sameIDs(ids) {
		return &Conflict{Resource: s.name, Endpoint: strings.Join(unknown, ", "), Signal: "checkpoint"}
	}
	if replaced {
		ep := "an endpoint gpulet cannot see"
		if len(unknown) > 0 {
			ep = strings.Join(unknown, ", ")
		}
		return &Conflict{Resource: s.name, Endpoint: ep, Signal: "stream-replaced"}
	}
	return nil
}

// sameIDs reports whether ids are the device IDs this server advertises.
func (s *Server) sameIDs(ids []string) bool {
	res, _ := s.current()
	if len(ids) != len(res.Devices) {
		return false
	}
	for _, id := range ids {
		if _, ok := res.Device(id); !ok {
			return false
		}
	}
	return true
}
