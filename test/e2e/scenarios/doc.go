// Package scenarios holds the end-to-end scenarios' assertions, written in Go
// against the cluster that test/e2e/run.sh brings up (client-go, typed
// objects, bounded polling). The package has only tests; they skip unless
// run.sh sets GPULET_E2E_W. test/e2e/README.md says how to add a scenario.
package scenarios
