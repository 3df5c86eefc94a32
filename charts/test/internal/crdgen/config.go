package crdgen

import "golang.org/x/tools/go/packages"

// loaderConfig makes go/packages resolve import paths in dir's module.
func loaderConfig(dir string) *packages.Config {
	return &packages.Config{Dir: dir}
}
