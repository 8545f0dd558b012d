package deploy

import (
	"os"
	"regexp"
	"strings"
	"testing"
)

// The image's bases are pinned by digest, its default user is not root, and
// the offline build (hack/image.sh) pins the Debian package it takes files
// from and sets the same user.
func TestImagePinsAndUser(t *testing.T) {
	df, err := os.ReadFile("../Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	pinned := regexp.MustCompile(`^FROM \S+@sha256:[0-9a-f]{64}( AS \S+)?$`)
	var froms int
	var user string
	for _, l := range strings.Split(string(df), "\n") {
		switch {
		case strings.HasPrefix(l, "FROM "):
			froms++
			user = ""
			if !pinned.MatchString(l) {
				t.Errorf("Dockerfile: %q is not pinned by digest", l)
			}
		case strings.HasPrefix(l, "USER "):
			user = strings.TrimPrefix(l, "USER ")
		}
	}
	if froms < 2 {
		t.Errorf("Dockerfile has %d stages", froms)
	}
	if user != "65532:65532" {
		t.Errorf("the runtime stage's USER is %q, want 65532:65532 (distroless nonroot)", user)
	}
	sh, err := os.ReadFile("../hack/image.sh")
	if err != nil {
		t.Fatal(err)
	}
	if !regexp.MustCompile(`(?m)^declare -A libc6_pins=\(\[libc6\]=\d\S* \[libc6-arm64-cross\]=\d\S*\)$`).Match(sh) {
		t.Error("hack/image.sh does not pin the versions of the packages it takes libc from")
	}
	if !strings.Contains(string(sh), `\"User\":\"65532:65532\"`) {
		t.Error("hack/image.sh's image config does not set User 65532:65532")
	}
}
