package plugin

import (
	"fmt"
	"path/filepath"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"
)

// Dial connects to the plugin socket endpoint in dir the way the kubelet
// does, so `gpulet doctor` can ask a running gpulet what it advertises. The
// returned func closes the connection.
func Dial(dir, endpoint string) (pluginapi.DevicePluginClient, func() error, error) {
	target := "unix://" + filepath.Join(dir, endpoint)
	conn, err := grpc.NewClient(target, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, nil, fmt.Errorf("connect to %s: %w", target, err)
	}
	return pluginapi.NewDevicePluginClient(conn), conn.Close, nil
}
