package charttest

import (
	"bufio"
	"debug/elf"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
)

// instruction is one Dockerfile instruction, continuation lines joined.
type instruction struct {
	cmd  string // upper case: FROM, RUN, ...
	args string
	line int
}

// stage is a FROM and what follows it.
type stage struct {
	from   string // image reference
	name   string // AS name
	instrs []instruction
}

func parseDockerfile(t testing.TB) []stage {
	t.Helper()
	f, err := os.Open(filepath.Join(repoRoot, "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var (
		stages []stage
		cur    strings.Builder
		start  int
	)
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if cur.Len() == 0 && (line == "" || strings.HasPrefix(line, "#")) {
			continue
		}
		if cur.Len() > 0 && strings.HasPrefix(line, "#") {
			continue // a comment inside a continued instruction
		}
		if cur.Len() == 0 {
			start = n
		}
		if strings.HasSuffix(line, `\`) {
			cur.WriteString(strings.TrimSuffix(line, `\`) + " ")
			continue
		}
		cur.WriteString(line)
		cmd, args, _ := strings.Cut(cur.String(), " ")
		cur.Reset()
		in := instruction{cmd: strings.ToUpper(cmd), args: strings.TrimSpace(args), line: start}
		if in.cmd == "FROM" {
			f := strings.Fields(in.args)
			s := stage{from: f[0]}
			if len(f) == 3 && strings.EqualFold(f[1], "AS") {
				s.name = f[2]
			}
			stages = append(stages, s)
			continue
		}
		if len(stages) == 0 {
			if in.cmd != "ARG" {
				t.Fatalf("Dockerfile:%d: %s before the first FROM", in.line, in.cmd)
			}
			stages = append(stages, stage{}) // global ARGs
			stages[0].instrs = append(stages[0].instrs, in)
			continue
		}
		stages[len(stages)-1].instrs = append(stages[len(stages)-1].instrs, in)
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return stages
}

// globalArgs are the ARGs before the first FROM with their defaults.
func globalArgs(stages []stage) map[string]string {
	args := map[string]string{}
	if stages[0].from == "" {
		for _, in := range stages[0].instrs {
			k, v, _ := strings.Cut(in.args, "=")
			args[k] = v
		}
	}
	return args
}

func expand(s string, vars map[string]string) string {
	return os.Expand(s, func(k string) string { return vars[k] })
}

func imageStages(stages []stage) []stage {
	if stages[0].from == "" {
		return stages[1:]
	}
	return stages
}

func TestDockerfile(t *testing.T) {
	all := parseDockerfile(t)
	globals := globalArgs(all)
	stages := imageStages(all)
	if len(stages) != 2 {
		t.Fatalf("%d stages, want 2: build and final", len(stages))
	}
	build, final := stages[0], stages[1]

	// Base images: pinned tags, the Go of go.mod, distroless static nonroot.
	goMod, err := os.ReadFile(filepath.Join(repoRoot, "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	goVersion := regexp.MustCompile(`(?m)^go (\S+)`).FindSubmatch(goMod)[1]
	if got, want := expand(build.from, globals), fmt.Sprintf("golang:%s-", goVersion); !strings.HasPrefix(got, want) {
		t.Errorf("build stage FROM %s, want %s... (the go directive of go.mod)", got, want)
	}
	if build.name != "build" {
		t.Errorf("build stage named %q, want build", build.name)
	}
	for _, s := range stages {
		ref := expand(s.from, globals)
		tag := ref[strings.LastIndex(ref, ":")+1:]
		if !strings.Contains(ref, ":") || tag == "latest" || strings.Contains(tag, "/") {
			t.Errorf("FROM %s: want a pinned tag, not latest or none", ref)
		}
	}
	if !regexp.MustCompile(`^gcr\.io/distroless/static-debian\d+:nonroot(@sha256:[0-9a-f]{64})?$`).MatchString(final.from) {
		t.Errorf("final stage FROM %s, want gcr.io/distroless/static-debianNN:nonroot", final.from)
	}

	// The build stage downloads modules before it copies the sources, so
	// that layer is cached, then runs the Makefile's build command.
	var order []string
	for _, in := range build.instrs {
		order = append(order, in.cmd+" "+in.args)
	}
	copyMod := slices.Index(order, "COPY go.mod go.sum ./")
	download := slices.IndexFunc(order, func(s string) bool { return strings.HasPrefix(s, "RUN go mod download") })
	copyAll := slices.Index(order, "COPY . .")
	if copyMod < 0 || download < copyMod || copyAll < download {
		t.Errorf("build stage = %q, want COPY go.mod go.sum ./, RUN go mod download, COPY . . in that order", order)
	}
	runBuild := buildCommand(t, build)
	makeOut, err := exec.Command("make", "-s", "-n", "-C", repoRoot, "build", "VERSION=v9.9.9-test", "GO=go").Output()
	if err != nil {
		t.Fatalf("make -n build: %v", err)
	}
	wantBuild := strings.TrimSpace(string(makeOut))
	if got := expand(runBuild, map[string]string{"VERSION": "v9.9.9-test"}); got != wantBuild {
		t.Errorf("Dockerfile builds with\n\t%s\nwant the Makefile's\n\t%s", got, wantBuild)
	}
	for _, want := range []string{"CGO_ENABLED=0", "-trimpath", "-X main.version=${VERSION}"} {
		if !strings.Contains(runBuild, want) {
			t.Errorf("build command %q lacks %s", runBuild, want)
		}
	}

	// The final stage: non-root by number, exec-form entrypoint, OCI labels.
	img := finalImage(t, final)
	if img.user != "65532:65532" && img.user != "65532" {
		t.Errorf("USER %q, want 65532 (numeric, so runAsNonRoot can check it)", img.user)
	}
	if len(img.entrypoint) == 0 {
		t.Errorf("ENTRYPOINT not in exec form (a JSON array)")
	}
	for _, label := range []string{"title", "description", "source", "version", "revision"} {
		if !strings.Contains(img.labels, "org.opencontainers.image."+label+"=") {
			t.Errorf("no LABEL org.opencontainers.image.%s", label)
		}
	}
	if img.copyFrom != "/src/bin/warren" || img.binary != img.entrypoint[0] {
		t.Errorf("final stage copies %s to %s and runs %v; want the build's /src/bin/warren as the entrypoint", img.copyFrom, img.binary, img.entrypoint)
	}
}

// buildCommand returns the build stage's RUN that runs go build.
func buildCommand(t testing.TB, build stage) string {
	t.Helper()
	for _, in := range build.instrs {
		if in.cmd == "RUN" && strings.Contains(in.args, "go build") {
			return in.args
		}
	}
	t.Fatal("no RUN ... go build in the build stage")
	return ""
}

// image is what the final stage says about running warren.
type image struct {
	user       string
	entrypoint []string
	cmd        []string
	labels     string
	copyFrom   string // path in the build stage
	binary     string // path in the image
}

func finalImage(t testing.TB, final stage) image {
	t.Helper()
	var img image
	for _, in := range final.instrs {
		switch in.cmd {
		case "USER":
			img.user = in.args
		case "ENTRYPOINT", "CMD":
			var argv []string
			if err := json.Unmarshal([]byte(in.args), &argv); err != nil {
				t.Errorf("Dockerfile:%d: %s %s is not exec form: %v", in.line, in.cmd, in.args, err)
			}
			if in.cmd == "ENTRYPOINT" {
				img.entrypoint = argv
			} else {
				img.cmd = argv
			}
		case "LABEL":
			img.labels += in.args + " "
		case "COPY":
			f := strings.Fields(in.args)
			if len(f) == 3 && f[0] == "--from=build" {
				img.copyFrom, img.binary = f[1], f[2]
			}
		}
	}
	return img
}

func TestDockerignore(t *testing.T) {
	patterns := dockerignore(t)
	tests := []struct {
		give string
		want bool // excluded from the build context
	}{
		{"go.mod", false},
		{"go.sum", false},
		{"cmd/warren/main.go", false},
		{"config/config.go", false},
		{"worker/worker.go", false},
		{"handler/handler.go", false},
		{".git", true},
		{"bin", true},
		{"charts", true},
		{"charts/test/go.mod", true},
		{"warren.test", true},
	}
	for _, tt := range tests {
		if got := ignored(patterns, tt.give); got != tt.want {
			t.Errorf("ignored(%q) = %v, want %v", tt.give, got, tt.want)
		}
	}
}

// dockerignore reads .dockerignore. The emulated build supports the plain
// patterns this project uses; it refuses exceptions and ** rather than get
// them wrong.
func dockerignore(t testing.TB) []string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(repoRoot, ".dockerignore"))
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if strings.HasPrefix(line, "!") || strings.Contains(line, "**") {
			t.Fatalf(".dockerignore: %q: exceptions and ** are not supported by this test", line)
		}
		out = append(out, path.Clean(strings.TrimPrefix(line, "/")))
	}
	return out
}

// ignored reports whether a context path, or a directory above it, matches
// a pattern (patterns are anchored at the context root, as Docker's are).
func ignored(patterns []string, rel string) bool {
	for p := rel; p != "." && p != "/"; p = path.Dir(p) {
		for _, pat := range patterns {
			if ok, _ := path.Match(pat, p); ok {
				return true
			}
		}
	}
	return false
}

var (
	imageOnce sync.Once
	imageBin  string
	imageErr  error
	imageCfg  image
)

// warrenBinary builds warren the way the Dockerfile's build stage does, on
// this machine's Go instead of the golang image's: the build context
// filtered by .dockerignore, then the stage's COPY and RUN instructions in
// order. It returns the binary the final stage would run.
func warrenBinary(t testing.TB) string {
	t.Helper()
	imageOnce.Do(func() { imageBin, imageCfg, imageErr = buildImage(t) })
	if imageErr != nil {
		t.Fatalf("build as the Dockerfile does: %v", imageErr)
	}
	return imageBin
}

// builtImage is warrenBinary's image configuration.
func builtImage(t testing.TB) image {
	warrenBinary(t)
	return imageCfg
}

func buildImage(t testing.TB) (string, image, error) {
	all := parseDockerfile(t)
	globals := globalArgs(all)
	stages := imageStages(all)
	build, final := stages[0], stages[len(stages)-1]
	img := finalImage(t, final)

	root, err := os.MkdirTemp("", "warren-image-")
	if err != nil {
		return "", img, err
	}
	// Readable by the unprivileged user the kubelet test runs warren as.
	if err := os.Chmod(root, 0o755); err != nil {
		return "", img, err
	}
	removeAtExit(root)
	fsRoot := filepath.Join(root, "build") // the build stage's filesystem
	patterns := dockerignore(t)
	vars := map[string]string{}
	for k, v := range globals {
		vars[k] = v
	}
	vars["VERSION"] = "v0.0.0-charttest"
	workdir := "/"
	for _, in := range build.instrs {
		args := expand(in.args, vars)
		switch in.cmd {
		case "WORKDIR":
			workdir = path.Join(workdir, args)
			if err := os.MkdirAll(filepath.Join(fsRoot, workdir), 0o755); err != nil {
				return "", img, err
			}
		case "ARG":
			k, v, hasDefault := strings.Cut(args, "=")
			if _, set := vars[k]; !set && hasDefault {
				vars[k] = v
			}
		case "ENV":
			k, v, _ := strings.Cut(args, "=")
			vars[k] = v
		case "COPY":
			f := strings.Fields(args)
			dst := filepath.Join(fsRoot, workdir, f[len(f)-1])
			for _, src := range f[:len(f)-1] {
				if err := copyContext(repoRoot, src, dst, patterns); err != nil {
					return "", img, fmt.Errorf("Dockerfile:%d: COPY %s: %w", in.line, args, err)
				}
			}
		case "RUN":
			cmd := exec.Command("/bin/sh", "-c", args)
			cmd.Dir = filepath.Join(fsRoot, workdir)
			cmd.Env = buildEnv(vars)
			if out, err := cmd.CombinedOutput(); err != nil {
				return "", img, fmt.Errorf("Dockerfile:%d: RUN %s: %v\n%s", in.line, args, err, out)
			}
		default:
			return "", img, fmt.Errorf("Dockerfile:%d: %s not supported by the emulated build", in.line, in.cmd)
		}
	}
	bin := filepath.Join(root, "warren")
	if err := copyFile(filepath.Join(fsRoot, img.copyFrom), bin, 0o755); err != nil {
		return "", img, fmt.Errorf("final stage COPY %s: %w", img.copyFrom, err)
	}
	return bin, img, nil
}

// buildEnv is this process's environment as the golang image would have
// it: no GOFLAGS of this machine, plus the stage's ARG and ENV values.
func buildEnv(vars map[string]string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "GOFLAGS=") {
			env = append(env, kv)
		}
	}
	for k, v := range vars {
		env = append(env, k+"="+v)
	}
	return env
}

// copyContext copies src (a file or directory of the build context, "."
// for all of it) to dst, leaving out what .dockerignore excludes.
func copyContext(context, src, dst string, patterns []string) error {
	base := filepath.Join(context, src)
	info, err := os.Stat(base)
	if err != nil {
		return err
	}
	if !info.IsDir() {
		if ignored(patterns, path.Clean(src)) {
			return fmt.Errorf("%s is excluded by .dockerignore", src)
		}
		if strings.HasSuffix(dst, "/") || isDir(dst) {
			dst = filepath.Join(dst, filepath.Base(src))
		}
		return copyFile(base, dst, info.Mode())
	}
	return filepath.WalkDir(base, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(context, p)
		if err != nil {
			return err
		}
		if rel != "." && ignored(patterns, filepath.ToSlash(rel)) {
			if d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		relSrc, _ := filepath.Rel(base, p)
		target := filepath.Join(dst, relSrc)
		if d.IsDir() {
			return os.MkdirAll(target, 0o755)
		}
		if !d.Type().IsRegular() {
			return nil
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		return copyFile(p, target, fi.Mode())
	})
}

func isDir(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.IsDir()
}

func copyFile(src, dst string, mode fs.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, mode.Perm())
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// TestImageBinary checks what the Dockerfile's build produces: a static
// binary (distroless static has no C library) that knows its version.
func TestImageBinary(t *testing.T) {
	bin := warrenBinary(t)
	f, err := elf.Open(bin)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			t.Errorf("%s has a program interpreter: not static, will not run on distroless static", bin)
		}
	}
	out, err := exec.Command(bin, "version").Output()
	if err != nil || strings.TrimSpace(string(out)) != "v0.0.0-charttest" {
		t.Errorf("warren version = %q, %v; want v0.0.0-charttest (VERSION build arg)", out, err)
	}
	img := builtImage(t)
	if len(img.cmd) == 0 || img.cmd[0] != "run" {
		t.Errorf("CMD %v, want [run]", img.cmd)
	}
}
