module github.com/gpulet/gpulet/test/e2e/images/pause

go 1.26.0
