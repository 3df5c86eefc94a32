package config

import "testing"

func TestBytesDecode(t *testing.T) {
	for _, tt := range []struct {
		give    string
		want    Bytes
		wantErr bool
	}{
		{give: "1048576", want: 1 << 20},
		{give: "64Ki", want: 64 << 10},
		{give: "256Mi", want: 256 << 20},
		{give: "2Gi", want: 2 << 30},
		{give: "0", want: 0},
		{give: "", wantErr: true},
		{give: "Mi", wantErr: true},
		{give: "-5", wantErr: true},
		{give: "+5", wantErr: true},
		{give: "1.5Gi", wantErr: true},
		{give: "5M", wantErr: true},
		{give: "5mi", wantErr: true},
		{give: "0x10", wantErr: true},
		{give: "9999999999Gi", wantErr: true},
	} {
		var b Bytes
		err := b.Decode(tt.give)
		if (err != nil) != tt.wantErr || (!tt.wantErr && b != tt.want) {
			t.Errorf("Decode(%q) = %d, %v; want %d, error %v", tt.give, b, err, tt.want, tt.wantErr)
		}
	}
}

func TestBytesString(t *testing.T) {
	for _, tt := range []struct {
		give Bytes
		want string
	}{
		{give: 0, want: "0"},
		{give: 1000, want: "1000"},
		{give: 1536, want: "1536"}, // 1.5 Ki: not a whole number of Ki
		{give: 256 << 20, want: "256Mi"},
		{give: 3 << 30, want: "3Gi"},
	} {
		if got := tt.give.String(); got != tt.want {
			t.Errorf("Bytes(%d).String() = %q, want %q", int64(tt.give), got, tt.want)
		}
	}
}
