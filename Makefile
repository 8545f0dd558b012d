.PHONY: e2e
# End-to-end test on a real single-node Kubernetes (root; see test/e2e/README.md).
e2e:
	test/e2e/run.sh
