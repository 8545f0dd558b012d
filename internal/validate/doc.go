// Package validate is `gpulet validate`: it proves that the GPUs a process
// was given work. Through the CUDA driver API (package cudadriver, which
// loads libcuda.so.1 at run time, so no CUDA toolkit is needed to build
// gpulet) it runs a small kernel on each visible GPU, checks its result,
// measures copy bandwidth and tells how many devices CUDA sees under the
// process's environment: the check that the plugin's NVIDIA_VISIBLE_DEVICES
// gives a container exactly the GPUs it was allocated.
//
// The CUDA calls sit behind cudadriver.Driver; the logic here (environment,
// checks, bandwidth arithmetic, the report) is tested without a GPU.
package validate
