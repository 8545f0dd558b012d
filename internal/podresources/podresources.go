// Package podresources reads which container holds which device from the
// kubelet's PodResources API (v1 List), as dcgm-exporter does to label GPU
// metrics with the pod that uses the GPU, and maps the device-plugin IDs
// back to device UUIDs.
package podresources

import (
	"context"
	"fmt"
	"sort"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	podresourcesv1 "k8s.io/kubelet/pkg/apis/podresources/v1"

	"github.com/gpulet/gpulet/internal/resources"
)

// DefaultSocket is where the kubelet serves the PodResources API.
const DefaultSocket = "/var/lib/kubelet/pod-resources/kubelet.sock"

// callTimeout bounds one List, so a hung kubelet cannot stall a caller.
const callTimeout = 5 * time.Second

// Owner is a container holding a device.
type Owner struct {
	Namespace string `json:"namespace"`
	Pod       string `json:"pod"`
	Container string `json:"container"`
}

// Assignment is the devices of one resource a container holds.
type Assignment struct {
	Owner
	Resource  string
	DeviceIDs []string
}

// Client talks to the kubelet's PodResources socket.
type Client struct {
	conn *grpc.ClientConn
	api  podresourcesv1.PodResourcesListerClient
}

// Dial prepares a client of the socket; the connection is made lazily, so a
// kubelet that is not there yet is an error of List, not of Dial.
func Dial(socket string) (*Client, error) {
	conn, err := grpc.NewClient("unix://"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, fmt.Errorf("pod resources socket %s: %w", socket, err)
	}
	return &Client{conn: conn, api: podresourcesv1.NewPodResourcesListerClient(conn)}, nil
}

// Close closes the connection.
func (c *Client) Close() error { return c.conn.Close() }

// List returns every container's devices of the given resources (all
// resources when none is given), sorted by namespace, pod and container.
func (c *Client) List(ctx context.Context, resourceNames ...string) ([]Assignment, error) {
	ctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	resp, err := c.api.List(ctx, &podresourcesv1.ListPodResourcesRequest{})
	if err != nil {
		return nil, fmt.Errorf("kubelet PodResources List: %w", err)
	}
	want := map[string]bool{}
	for _, n := range resourceNames {
		want[n] = true
	}
	var out []Assignment
	for _, p := range resp.GetPodResources() {
		for _, ctr := range p.GetContainers() {
			for _, d := range ctr.GetDevices() {
				if len(want) > 0 && !want[d.GetResourceName()] || len(d.GetDeviceIds()) == 0 {
					continue
				}
				out = append(out, Assignment{
					Owner:     Owner{Namespace: p.GetNamespace(), Pod: p.GetName(), Container: ctr.GetName()},
					Resource:  d.GetResourceName(),
					DeviceIDs: append([]string(nil), d.GetDeviceIds()...),
				})
			}
		}
	}
	sort.Slice(out, func(i, j int) bool {
		a, b := out[i].Owner, out[j].Owner
		if a.Namespace != b.Namespace {
			return a.Namespace < b.Namespace
		}
		if a.Pod != b.Pod {
			return a.Pod < b.Pod
		}
		return a.Container < b.Container
	})
	return out, nil
}

// ByDevice maps the UUID of each device (GPU or MIG instance) to the
// containers holding it, resolving device-plugin IDs (a UUID, an index, a
// time-sliced replica) through the advertised resources. A time-sliced GPU
// can have several owners; each is listed once.
func ByDevice(asg []Assignment, advertised []resources.Resource) map[string][]Owner {
	uuidOf := map[string]map[string]string{} // resource → ID → UUID
	for _, r := range advertised {
		m := make(map[string]string, len(r.Devices))
		for _, d := range r.Devices {
			m[d.ID] = d.UUID
		}
		uuidOf[r.Name] = m
	}
	out := map[string][]Owner{}
	for _, a := range asg {
		ids := uuidOf[a.Resource]
		for _, id := range a.DeviceIDs {
			uuid, ok := ids[id]
			if !ok {
				continue // another plugin's device, or one gone since
			}
			dup := false
			for _, o := range out[uuid] {
				dup = dup || o == a.Owner
			}
			if !dup {
				out[uuid] = append(out[uuid], a.Owner)
			}
		}
	}
	return out
}
