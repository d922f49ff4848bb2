package contentservice

import (
	"bytes"
	"errors"
	"maps"
	"slices"
	"testing"

	api "github.com/containerd/containerd/api/services/content/v1"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
)

// TestDecodeWriteRequest checks that a writeRequest decodes what
// protobuf's decoder decodes from the same bytes, with its data pointing
// into them, for the messages containerd's proxy sends and for odder ones
// (fields repeated, unknown fields).
func TestDecodeWriteRequest(t *testing.T) {
	for name, m := range map[string]*api.WriteContentRequest{
		"first":  {Action: api.WriteAction_STAT, Ref: "checkpoint-1", Total: 1 << 30, Expected: "sha256:" + string(bytes.Repeat([]byte("a"), 64))},
		"write":  {Action: api.WriteAction_WRITE, Offset: 1 << 40, Data: bytes.Repeat([]byte{7}, 32<<10)},
		"commit": {Action: api.WriteAction_COMMIT, Total: 5, Offset: 5, Expected: "sha256:x", Labels: map[string]string{"a": "1", "containerd.io/gc.root": ""}},
		"empty":  {},
	} {
		b, err := proto.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		// Unknown fields, and a repeated scalar whose last value wins.
		b = protowire.AppendTag(b, 99, protowire.BytesType)
		b = protowire.AppendBytes(b, []byte("unknown"))
		b = protowire.AppendTag(b, fieldOffset, protowire.VarintType)
		b = protowire.AppendVarint(b, 12345)
		want := &api.WriteContentRequest{}
		if err := proto.Unmarshal(b, want); err != nil {
			t.Fatal(err)
		}
		var got writeRequest
		if err := got.decode(b); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if got.Action != want.Action || got.Ref != want.Ref || got.Total != want.Total || got.Expected != want.Expected ||
			got.Offset != want.Offset || !bytes.Equal(got.Data, want.Data) || !maps.Equal(got.Labels, want.Labels) {
			t.Errorf("%s: decoded %+v, protobuf decodes %+v", name, got, want)
		}
		if len(got.Data) > 0 {
			b[bytes.Index(b, want.Data)]++
			if got.Data[0] == want.Data[0] {
				t.Errorf("%s: data is a copy, not part of the message", name)
			}
		}
	}
}

func TestDecodeWriteRequestMalformed(t *testing.T) {
	good, _ := proto.Marshal(&api.WriteContentRequest{Ref: "r", Data: []byte("abc")})
	for name, b := range map[string][]byte{
		"truncated":   good[:len(good)-1],
		"bad varint":  {fieldOffset << 3, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01},
		"bad utf-8":   protowire.AppendBytes(protowire.AppendTag(nil, fieldRef, protowire.BytesType), []byte{0xff}),
		"bad label":   protowire.AppendBytes(protowire.AppendTag(nil, fieldLabels, protowire.BytesType), []byte{0x0a, 5}),
		"wrong type":  protowire.AppendVarint(protowire.AppendTag(nil, fieldData, protowire.VarintType), 1)[:1],
		"unknown end": protowire.AppendTag(nil, 50, protowire.Fixed64Type),
	} {
		var w writeRequest
		if err := w.decode(b); !errors.Is(err, errMalformed) {
			t.Errorf("%s: got %v, want malformed", name, err)
		}
		if err := proto.Unmarshal(b, &api.WriteContentRequest{}); err == nil {
			t.Errorf("%s: protobuf accepts it", name)
		}
	}
}

// TestCodecKeepsWriteData checks that the codec hands a write request's
// data over with a reference of its own, valid after gRPC frees what it
// passed in, and that other messages decode as protobuf's codec decodes
// them.
func TestCodecKeepsWriteData(t *testing.T) {
	data := bytes.Repeat([]byte("d"), 40<<10)
	b, _ := proto.Marshal(&api.WriteContentRequest{Action: api.WriteAction_WRITE, Data: data})
	// Received in frame-sized pieces, as gRPC's transport delivers them.
	var in mem.BufferSlice
	for p := range slices.Chunk(bytes.Clone(b), 16<<10) {
		in = append(in, mem.Copy(p, pool))
	}
	var w writeRequest
	if err := (codec{}).Unmarshal(in, &w); err != nil {
		t.Fatal(err)
	}
	in.Free()
	if !bytes.Equal(w.Data, data) {
		t.Fatal("data changed once gRPC freed its buffers")
	}
	w.free()

	var info api.InfoRequest
	b, _ = proto.Marshal(&api.InfoRequest{Digest: "sha256:abc"})
	if err := (codec{}).Unmarshal(mem.BufferSlice{mem.SliceBuffer(b)}, &info); err != nil || info.Digest != "sha256:abc" {
		t.Fatalf("InfoRequest: %v, %v", info.Digest, err)
	}
	out, err := (codec{}).Marshal(&api.ReadContentResponse{Data: data})
	if err != nil {
		t.Fatal(err)
	}
	var resp api.ReadContentResponse
	if err := proto.Unmarshal(out.Materialize(), &resp); err != nil || !bytes.Equal(resp.Data, data) {
		t.Fatalf("ReadContentResponse round trip: %v", err)
	}
	out.Free()
}

func TestBufferPoolClasses(t *testing.T) {
	for _, tc := range []struct{ size, capacity int }{
		{1, 4 << 10}, {4 << 10, 4 << 10}, {32<<10 + 12, 36 << 10}, {64 << 10, 64 << 10},
		{64<<10 + 1, 128 << 10}, {1 << 20, 1 << 20}, {8<<20 + 30, 16 << 20}, {32 << 20, 32 << 20},
		{32<<20 + 1, 32<<20 + 1}, // not pooled
	} {
		b := pool.Get(tc.size)
		if len(*b) != tc.size || cap(*b) != tc.capacity {
			t.Errorf("Get(%d): len %d cap %d, want cap %d", tc.size, len(*b), cap(*b), tc.capacity)
		}
		pool.Put(b)
	}
}

// FuzzDecodeWriteRequest checks that a writeRequest decodes exactly what
// protobuf's decoder decodes, and refuses what it refuses.
func FuzzDecodeWriteRequest(f *testing.F) {
	for _, m := range []*api.WriteContentRequest{
		{Action: api.WriteAction_WRITE, Offset: 32 << 10, Data: []byte("data")},
		{Action: api.WriteAction_COMMIT, Ref: "r", Total: 4, Expected: "sha256:x", Labels: map[string]string{"k": "v"}},
	} {
		b, _ := proto.Marshal(m)
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		want := &api.WriteContentRequest{}
		werr := proto.Unmarshal(b, want)
		var got writeRequest
		gerr := got.decode(b)
		if (werr == nil) != (gerr == nil) {
			t.Fatalf("protobuf: %v; decode: %v", werr, gerr)
		}
		if werr != nil {
			return
		}
		if got.Action != want.Action || got.Ref != want.Ref || got.Total != want.Total || got.Expected != want.Expected ||
			got.Offset != want.Offset || !bytes.Equal(got.Data, want.Data) || !maps.Equal(got.Labels, want.Labels) {
			t.Fatalf("decoded %+v, protobuf decodes %+v", got, want)
		}
	})
}
