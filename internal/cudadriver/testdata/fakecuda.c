// A stand-in for libcuda.so.1, built by the tests to exercise gpulet's
// purego binding on machines without a GPU: the same symbols and calling
// conventions as the CUDA driver API, with "device" memory in host RAM and a
// vadd kernel done on the CPU.
//
// Behaviour comes from the environment, read at each cuInit:
//   FAKECUDA_GPUS        comma-separated UUIDs of the fake physical GPUs
//                        (default two, or -DFAKECUDA_DEFAULT_GPUS='"GPU-..."';
//                        -DFAKECUDA_NAME_FMT and -DFAKECUDA_BUS_FMT change
//                        names and bus IDs, to rehearse hack/gpu-check.sh)
//   FAKECUDA_INIT_ERROR  a CUresult cuInit returns instead of success
//   FAKECUDA_BAD_KERNEL  if set, vadd gets element 7 wrong
//   FAKECUDA_NO_PIN      if set, cuMemAllocHost_v2 fails
//   CUDA_VISIBLE_DEVICES filtered as CUDA does: UUIDs or indices, in
//                        order, stopping at the first unknown entry; an
//                        empty value hides every device.
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef int CUresult;
typedef int CUdevice;
typedef unsigned long long CUdeviceptr;

#define MAXDEV 16
static char phys[MAXDEV][64];
static int nphys;
static int visible[MAXDEV];
static int nvisible;
static int current = -1;

#ifndef FAKECUDA_DEFAULT_GPUS
#define FAKECUDA_DEFAULT_GPUS "GPU-11111111-2222-3333-4444-555555555555,GPU-aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"
#endif

static void load_gpus(void) {
	const char *g = getenv("FAKECUDA_GPUS");
	if (!g || !*g)
		g = FAKECUDA_DEFAULT_GPUS;
	nphys = 0;
	const char *p = g;
	while (*p && nphys < MAXDEV) {
		const char *e = strchr(p, ',');
		size_t n = e ? (size_t)(e - p) : strlen(p);
		if (n >= sizeof phys[0])
			n = sizeof phys[0] - 1;
		memcpy(phys[nphys], p, n);
		phys[nphys][n] = 0;
		nphys++;
		if (!e)
			break;
		p = e + 1;
	}
}

static int find(const char *tok) {
	for (int i = 0; i < nphys; i++)
		if (strcmp(phys[i], tok) == 0)
			return i;
	char *end;
	long v = strtol(tok, &end, 10);
	if (*tok && *end == 0 && v >= 0 && v < nphys)
		return (int)v;
	return -1;
}

CUresult cuInit(unsigned int flags) {
	(void)flags;
	const char *err = getenv("FAKECUDA_INIT_ERROR");
	if (err && *err)
		return atoi(err);
	load_gpus();
	nvisible = 0;
	const char *cvd = getenv("CUDA_VISIBLE_DEVICES");
	if (!cvd) {
		for (int i = 0; i < nphys; i++)
			visible[nvisible++] = i;
	} else {
		char buf[1024];
		snprintf(buf, sizeof buf, "%s", cvd);
		for (char *tok = strtok(buf, ","); tok; tok = strtok(NULL, ",")) {
			int i = find(tok);
			if (i < 0)
				break;
			visible[nvisible++] = i;
		}
	}
	if (nvisible == 0)
		return 100; /* CUDA_ERROR_NO_DEVICE */
	return 0;
}

CUresult cuDriverGetVersion(int *v) { *v = 13000; return 0; }
CUresult cuDeviceGetCount(int *n) { *n = nvisible; return 0; }

CUresult cuDeviceGet(CUdevice *d, int ordinal) {
	if (ordinal < 0 || ordinal >= nvisible)
		return 101; /* CUDA_ERROR_INVALID_DEVICE */
	*d = ordinal;
	return 0;
}

#ifndef FAKECUDA_NAME_FMT
#define FAKECUDA_NAME_FMT "Fake GPU %d"
#endif
#ifndef FAKECUDA_BUS_FMT
#define FAKECUDA_BUS_FMT "0000:%02X:00.0"
#endif

CUresult cuDeviceGetName(char *name, int len, CUdevice d) {
	snprintf(name, (size_t)len, FAKECUDA_NAME_FMT, visible[d]);
	return 0;
}

CUresult cuDeviceGetUuid_v2(unsigned char *uuid, CUdevice d) {
	const char *s = phys[visible[d]] + 4; /* skip GPU- */
	int k = 0;
	for (; *s && k < 16; s++) {
		if (*s == '-')
			continue;
		unsigned v;
		if (sscanf(s, "%2x", &v) != 1)
			return 1;
		uuid[k++] = (unsigned char)v;
		s++;
	}
	return k == 16 ? 0 : 1;
}

CUresult cuDeviceGetAttribute(int *v, int attr, CUdevice d) {
	(void)d;
	if (attr == 75) { *v = 9; return 0; }
	if (attr == 76) { *v = 0; return 0; }
	return 1;
}

CUresult cuDeviceTotalMem_v2(size_t *b, CUdevice d) {
	(void)d;
	*b = (size_t)143771 << 20;
	return 0;
}

CUresult cuDeviceGetPCIBusId(char *bus, int len, CUdevice d) {
	snprintf(bus, (size_t)len, FAKECUDA_BUS_FMT, 0x10 + visible[d]);
	return 0;
}

CUresult cuDevicePrimaryCtxRetain(void **ctx, CUdevice d) {
	*ctx = (void *)(uintptr_t)(0x1000 + d);
	return 0;
}
CUresult cuDevicePrimaryCtxRelease_v2(CUdevice d) { (void)d; return 0; }

CUresult cuCtxSetCurrent(void *ctx) {
	current = ctx ? (int)((uintptr_t)ctx - 0x1000) : -1;
	return 0;
}
CUresult cuCtxSynchronize(void) { return current < 0 ? 201 : 0; } /* INVALID_CONTEXT */

static int vadd_module;

CUresult cuModuleLoadDataEx(void **mod, const void *image, unsigned n, int *opts, void **vals) {
	if (current < 0)
		return 201;
	if (!strstr((const char *)image, ".entry vadd")) {
		for (unsigned i = 0; i < n; i++)
			if (opts[i] == 5) /* CU_JIT_ERROR_LOG_BUFFER */
				snprintf((char *)vals[i], 64, "fake: no .entry vadd in the image");
		return 218; /* CUDA_ERROR_INVALID_PTX */
	}
	*mod = &vadd_module;
	return 0;
}

CUresult cuModuleGetFunction(void **fn, void *mod, const char *name) {
	if (mod != &vadd_module || strcmp(name, "vadd") != 0)
		return 500; /* CUDA_ERROR_NOT_FOUND */
	*fn = (void *)&cuModuleGetFunction;
	return 0;
}
CUresult cuModuleUnload(void *mod) { return mod == &vadd_module ? 0 : 400; }

CUresult cuMemAlloc_v2(CUdeviceptr *p, size_t n) {
	if (current < 0)
		return 201;
	void *m = malloc(n);
	if (!m)
		return 2;
	*p = (CUdeviceptr)(uintptr_t)m;
	return 0;
}
CUresult cuMemFree_v2(CUdeviceptr p) { free((void *)(uintptr_t)p); return 0; }

CUresult cuMemAllocHost_v2(void **p, size_t n) {
	if (getenv("FAKECUDA_NO_PIN"))
		return 2;
	*p = malloc(n);
	return *p ? 0 : 2;
}
CUresult cuMemFreeHost(void *p) { free(p); return 0; }

CUresult cuMemcpyHtoD_v2(CUdeviceptr dst, const void *src, size_t n) {
	memcpy((void *)(uintptr_t)dst, src, n);
	return 0;
}
CUresult cuMemcpyDtoH_v2(void *dst, CUdeviceptr src, size_t n) {
	memcpy(dst, (const void *)(uintptr_t)src, n);
	return 0;
}
CUresult cuMemcpyDtoD_v2(CUdeviceptr dst, CUdeviceptr src, size_t n) {
	memcpy((void *)(uintptr_t)dst, (const void *)(uintptr_t)src, n);
	return 0;
}

CUresult cuLaunchKernel(void *f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz,
                        unsigned shared, void *stream, void **params, void **extra) {
	(void)shared; (void)stream; (void)extra;
	if (f != (void *)&cuModuleGetFunction || gy != 1 || gz != 1 || by != 1 || bz != 1)
		return 1; /* CUDA_ERROR_INVALID_VALUE */
	const float *a = *(const float **)params[0];
	const float *b = *(const float **)params[1];
	float *c = *(float **)params[2];
	unsigned n = *(unsigned *)params[3];
	unsigned long threads = (unsigned long)gx * bx;
	for (unsigned long i = 0; i < threads && i < n; i++)
		c[i] = a[i] + b[i];
	if (getenv("FAKECUDA_BAD_KERNEL") && n > 7)
		c[7] += 1;
	return 0;
}

CUresult cuGetErrorName(CUresult code, const char **s) {
	switch (code) {
	case 100: *s = "CUDA_ERROR_NO_DEVICE"; return 0;
	case 218: *s = "CUDA_ERROR_INVALID_PTX"; return 0;
	case 804: *s = "CUDA_ERROR_COMPAT_NOT_SUPPORTED_ON_DEVICE"; return 0;
	}
	return 1;
}

CUresult cuGetErrorString(CUresult code, const char **s) {
	switch (code) {
	case 100: *s = "no CUDA-capable device is detected"; return 0;
	case 218: *s = "a PTX JIT compilation failed"; return 0;
	}
	return 1;
}
