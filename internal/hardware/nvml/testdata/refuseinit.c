/* A libnvidia-ml.so.1 that loads but refuses to initialise, as NVML does on a
 * node whose kernel module is not loaded: every init entry point answers
 * NVML_ERROR_DRIVER_NOT_LOADED (9). Tests only (mock_test.go). */
typedef int nvmlReturn_t;

#define DRIVER_NOT_LOADED 9

nvmlReturn_t nvmlInit(void) { return DRIVER_NOT_LOADED; }
nvmlReturn_t nvmlInit_v2(void) { return DRIVER_NOT_LOADED; }
nvmlReturn_t nvmlInitWithFlags(unsigned int flags) { (void)flags; return DRIVER_NOT_LOADED; }
nvmlReturn_t nvmlShutdown(void) { return 0; }

const char *nvmlErrorString(nvmlReturn_t r) {
	return r == DRIVER_NOT_LOADED ? "Driver Not Loaded" : "Unknown Error";
}
