package contentservice

import (
	"errors"
	"fmt"
	"unicode/utf8"

	api "github.com/containerd/containerd/api/services/content/v1"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/protoadapt"
)

// codec is gRPC's protobuf codec with two changes for the content API's
// data-carrying messages: buffers come from pool (see bufferPool), and a
// Write request is decoded into a writeRequest whose data points into the
// received message instead of a fresh copy: protobuf's decoder allocates
// and fills a new slice for every bytes field, 32 KiB per write through
// containerd's proxy, which the store then copies again.
type codec struct{}

var _ encoding.CodecV2 = codec{}

// Name is that of gRPC's protobuf codec, whose wire format this is.
func (codec) Name() string { return "proto" }

func (codec) Marshal(v any) (mem.BufferSlice, error) {
	m := messageOf(v)
	if m == nil {
		return nil, fmt.Errorf("marshal %T: not a protobuf message", v)
	}
	size := proto.Size(m)
	opts := proto.MarshalOptions{UseCachedSize: true} // as gRPC's codec: Size just ran
	if mem.IsBelowBufferPoolingThreshold(size) {
		b, err := opts.Marshal(m)
		if err != nil {
			return nil, err
		}
		return mem.BufferSlice{mem.SliceBuffer(b)}, nil
	}
	b := pool.Get(size)
	if _, err := opts.MarshalAppend((*b)[:0], m); err != nil {
		pool.Put(b)
		return nil, err
	}
	return mem.BufferSlice{mem.NewBuffer(b, pool)}, nil
}

func (codec) Unmarshal(data mem.BufferSlice, v any) error {
	buf := data.MaterializeToBuffer(pool) // one reference of ours
	if w, ok := v.(*writeRequest); ok {
		if err := w.decode(buf.ReadOnlyData()); err != nil {
			buf.Free()
			return err
		}
		w.buf = buf // freed by the handler once the data is stored
		return nil
	}
	defer buf.Free()
	m := messageOf(v)
	if m == nil {
		return fmt.Errorf("unmarshal into %T: not a protobuf message", v)
	}
	return proto.Unmarshal(buf.ReadOnlyData(), m)
}

func messageOf(v any) proto.Message {
	switch v := v.(type) {
	case protoadapt.MessageV2:
		return v
	case protoadapt.MessageV1:
		return protoadapt.MessageV2Of(v)
	}
	return nil
}

// writeRequest is containerd's WriteContentRequest (api/services/content/v1)
// with Data pointing into buf, the received message, which the handler
// frees once the data is written.
type writeRequest struct {
	Action   api.WriteAction
	Ref      string
	Total    int64
	Expected string
	Offset   int64
	Data     []byte
	Labels   map[string]string

	buf mem.Buffer
}

// free lets the received message go; Data is invalid afterwards.
func (w *writeRequest) free() {
	if w.buf != nil {
		w.buf.Free()
		w.buf = nil
	}
	w.Data = nil
}

// The field numbers of WriteContentRequest (content.proto).
const (
	fieldAction   = 1
	fieldRef      = 2
	fieldTotal    = 3
	fieldExpected = 4
	fieldOffset   = 5
	fieldData     = 6
	fieldLabels   = 7
	// In each labels map entry.
	fieldKey   = 1
	fieldValue = 2
)

var errMalformed = errors.New("malformed WriteContentRequest")

// decode parses b as protobuf's decoder would (proto3: the last value of a
// field wins, map entries accumulate, unknown fields are skipped), except
// that Data aliases b.
func (w *writeRequest) decode(b []byte) error {
	*w = writeRequest{}
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return fmt.Errorf("%w: %v", errMalformed, protowire.ParseError(n))
		}
		if !num.IsValid() {
			return fmt.Errorf("%w: field number %d", errMalformed, num)
		}
		b = b[n:]
		switch {
		case typ == protowire.VarintType && (num == fieldAction || num == fieldTotal || num == fieldOffset):
			v, n := protowire.ConsumeVarint(b)
			if n < 0 {
				return fmt.Errorf("%w: field %d: %v", errMalformed, num, protowire.ParseError(n))
			}
			b = b[n:]
			switch num {
			case fieldAction:
				w.Action = api.WriteAction(int32(v))
			case fieldTotal:
				w.Total = int64(v)
			case fieldOffset:
				w.Offset = int64(v)
			}
		case typ == protowire.BytesType && (num == fieldRef || num == fieldExpected || num == fieldData || num == fieldLabels):
			v, n := protowire.ConsumeBytes(b)
			if n < 0 {
				return fmt.Errorf("%w: field %d: %v", errMalformed, num, protowire.ParseError(n))
			}
			b = b[n:]
			if num != fieldData && num != fieldLabels && !utf8.Valid(v) {
				return fmt.Errorf("%w: field %d: string is not valid UTF-8", errMalformed, num)
			}
			switch num {
			case fieldRef:
				w.Ref = string(v)
			case fieldExpected:
				w.Expected = string(v)
			case fieldData:
				w.Data = v
			case fieldLabels:
				k, val, err := decodeLabel(v)
				if err != nil {
					return err
				}
				if w.Labels == nil {
					w.Labels = map[string]string{}
				}
				w.Labels[k] = val
			}
		default:
			n := protowire.ConsumeFieldValue(num, typ, b)
			if n < 0 {
				return fmt.Errorf("%w: field %d: %v", errMalformed, num, protowire.ParseError(n))
			}
			b = b[n:]
		}
	}
	return nil
}

// decodeLabel parses one entry of the labels map.
func decodeLabel(b []byte) (key, value string, err error) {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return "", "", fmt.Errorf("%w: label: %v", errMalformed, protowire.ParseError(n))
		}
		if !num.IsValid() {
			return "", "", fmt.Errorf("%w: label: field number %d", errMalformed, num)
		}
		b = b[n:]
		if typ == protowire.BytesType && (num == fieldKey || num == fieldValue) {
			v, n := protowire.ConsumeBytes(b)
			if n < 0 {
				return "", "", fmt.Errorf("%w: label: %v", errMalformed, protowire.ParseError(n))
			}
			b = b[n:]
			if !utf8.Valid(v) {
				return "", "", fmt.Errorf("%w: label: string is not valid UTF-8", errMalformed)
			}
			if num == fieldKey {
				key = string(v)
			} else {
				value = string(v)
			}
			continue
		}
		n = protowire.ConsumeFieldValue(num, typ, b)
		if n < 0 {
			return "", "", fmt.Errorf("%w: label: %v", errMalformed, protowire.ParseError(n))
		}
		b = b[n:]
	}
	return key, value, nil
}
