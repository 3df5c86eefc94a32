package kubelet

import (
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
)

func TestExpand(t *testing.T) {
	env := map[string]string{"A": "1", "PORT": "8080"}
	tests := []struct {
		give, want string
	}{
		{give: "plain", want: "plain"},
		{give: "$(A)", want: "1"},
		{give: ":$(PORT)/x", want: ":8080/x"},
		{give: "$$(A)", want: "$(A)"},
		{give: "$(MISSING)", want: "$(MISSING)"},
		{give: "$(A", want: "$(A"},
		{give: "cost $5", want: "cost $5"},
		{give: "end$", want: "end$"},
	}
	for _, tt := range tests {
		if got := expand(tt.give, env); got != tt.want {
			t.Errorf("expand(%q) = %q, want %q", tt.give, got, tt.want)
		}
	}
}

func TestNextDelay(t *testing.T) {
	tests := []struct {
		prev, ran, want time.Duration
	}{
		{prev: 0, ran: time.Second, want: 10 * time.Second},
		{prev: 10 * time.Second, ran: time.Second, want: 20 * time.Second},
		{prev: 160 * time.Second, ran: time.Second, want: 5 * time.Minute},
		{prev: 5 * time.Minute, ran: time.Second, want: 5 * time.Minute},
		{prev: 5 * time.Minute, ran: 10 * time.Minute, want: 0},
	}
	for _, tt := range tests {
		if got := nextDelay(tt.prev, tt.ran); got != tt.want {
			t.Errorf("nextDelay(%v, %v) = %v, want %v", tt.prev, tt.ran, got, tt.want)
		}
	}
}

func TestIdentity(t *testing.T) {
	i := func(v int64) *int64 { return &v }
	yes := true
	tests := []struct {
		name       string
		psc        *corev1.PodSecurityContext
		sc         *corev1.SecurityContext
		wantUID    int
		wantGID    int
		wantGroups []int
		wantErr    bool
	}{
		{name: "none", wantGroups: []int{}},
		{
			name:    "pod",
			psc:     &corev1.PodSecurityContext{RunAsUser: i(65532), RunAsGroup: i(65532), FSGroup: i(2000)},
			wantUID: 65532, wantGID: 65532, wantGroups: []int{2000},
		},
		{
			name:    "container wins",
			psc:     &corev1.PodSecurityContext{RunAsUser: i(1000)},
			sc:      &corev1.SecurityContext{RunAsUser: i(1001), RunAsGroup: i(7)},
			wantUID: 1001, wantGID: 7, wantGroups: []int{},
		},
		{name: "non-root without a user", sc: &corev1.SecurityContext{RunAsNonRoot: &yes}, wantErr: true},
	}
	for _, tt := range tests {
		uid, gid, groups, err := identity(tt.psc, tt.sc)
		if (err != nil) != tt.wantErr {
			t.Errorf("%s: identity() error = %v, want error %v", tt.name, err, tt.wantErr)
			continue
		}
		if err != nil {
			continue
		}
		if uid != tt.wantUID || gid != tt.wantGID || len(groups) != len(tt.wantGroups) {
			t.Errorf("%s: identity() = %d, %d, %v, want %d, %d, %v", tt.name, uid, gid, groups, tt.wantUID, tt.wantGID, tt.wantGroups)
		}
	}
}
