package contentservice

import (
	"fmt"
	"io"
	"sync/atomic"
	"time"

	api "github.com/containerd/containerd/api/services/content/v1"
	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/pkg/protobuf"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/containerd/log"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Write is containerd's content service Write (plugins/services/content/
// contentserver, v2.4), the protocol unchanged, rewritten for what it costs
// on every message of a stream: containerd's proxy client sends one 32 KiB
// write at a time, each waiting for its reply. The request is received as
// a writeRequest (codec), whose data is the received message itself,
// stored with one copy, instead of decoded into a fresh 32 KiB slice first.
//
// Every reply carries the digest of what is written so far, as
// contentserver's do, so the store hashes each write before its reply.
// The API leaves the digest of a plain write's reply to the implementation
// (WriteContentResponse.digest), and hashing behind the replies was tried,
// but containerd's walking differ takes the digest to commit a diff with
// from the proxy writer's Digest() after its last write
// (plugins/diff/walking/differ.go), which is that of the last reply.
//
// It also counts each write's time in the handler and the time waiting
// for the next message (Metrics).
func (s *Service) Write(session api.Content_WriteServer) (err error) {
	var (
		ctx      = session.Context()
		msg      api.WriteContentResponse
		req      writeRequest
		ref      string
		total    int64
		expected digest.Digest
	)
	defer req.free()
	defer func(msg *api.WriteContentResponse) {
		// Pump through the last message if no error was encountered, as
		// contentserver does.
		if err != nil {
			if st, ok := status.FromError(err); ok && st.Code() != codes.AlreadyExists {
				log.G(ctx).WithError(err).Error("content write failed")
			}
			return
		}
		err = session.Send(msg)
	}(&msg)

	if err := session.RecvMsg(&req); err != nil {
		return err
	}
	ref = req.Ref
	if ref == "" {
		return status.Errorf(codes.InvalidArgument, "first message must have a reference")
	}
	fields := log.Fields{"ref": ref}
	total = req.Total
	expected = digest.Digest(req.Expected)
	if total > 0 {
		fields["total"] = total
	}
	if expected != "" {
		fields["expected"] = expected
	}
	ctx = log.WithLogger(ctx, log.G(ctx).WithFields(fields))
	log.G(ctx).Debug("content write started")

	// This locks the ref for the stream.
	wr, err := s.store.Writer(ctx, content.WithRef(ref), content.WithDescriptor(ocispec.Descriptor{Size: total, Digest: expected}))
	if err != nil {
		return errgrpc.ToGRPC(err)
	}
	defer wr.Close()

	received := time.Now()
	for {
		msg = api.WriteContentResponse{Action: req.Action}
		ws, err := wr.Status()
		if err != nil {
			return errgrpc.ToGRPC(err)
		}
		msg.Offset = ws.Offset // always set the offset

		// A client may predeclare size and digest (pulls) or learn them
		// only at commit (pushes, checkpoints): either is taken.
		if req.Expected != "" {
			dg := digest.Digest(req.Expected)
			if expected != "" && expected != dg {
				log.G(ctx).Debugf("commit digest differs from writer digest: %v != %v", dg, expected)
			}
			expected = dg
			if _, err := s.store.Info(ctx, dg); err == nil {
				if err := wr.Close(); err != nil {
					log.G(ctx).WithError(err).Error("failed to close writer")
				}
				if err := s.store.Abort(ctx, ref); err != nil {
					log.G(ctx).WithError(err).Error("failed to abort write")
				}
				return status.Errorf(codes.AlreadyExists, "blob with expected digest %v exists", req.Expected)
			}
		}
		if req.Total > 0 {
			if total > 0 && req.Total != total {
				log.G(ctx).Debugf("commit size differs from writer size: %v != %v", req.Total, total)
			}
			total = req.Total
		}

		switch req.Action {
		case api.WriteAction_STAT:
			msg.Digest = wr.Digest().String()
			msg.StartedAt = protobuf.ToTimestamp(ws.StartedAt)
			msg.UpdatedAt = protobuf.ToTimestamp(ws.UpdatedAt)
			msg.Total = total
		case api.WriteAction_WRITE, api.WriteAction_COMMIT:
			if req.Offset > 0 && req.Offset != ws.Offset {
				return status.Errorf(codes.OutOfRange, "write @%v must occur at current offset %v", req.Offset, ws.Offset)
			}
			if req.Offset == 0 && ws.Offset > 0 {
				if err := wr.Truncate(req.Offset); err != nil {
					return fmt.Errorf("truncate failed: %w", err)
				}
				msg.Offset = req.Offset
			}
			if len(req.Data) > 0 {
				n, err := wr.Write(req.Data)
				if err != nil {
					return errgrpc.ToGRPC(err)
				}
				if n != len(req.Data) {
					return status.Errorf(codes.DataLoss, "wrote %v of %v bytes", n, len(req.Data))
				}
				msg.Offset += int64(n)
			}
			if req.Action == api.WriteAction_COMMIT {
				var opts []content.Opt
				if req.Labels != nil {
					opts = append(opts, content.WithLabels(req.Labels))
				}
				if err := wr.Commit(ctx, total, expected, opts...); err != nil {
					return errgrpc.ToGRPC(err)
				}
			}
			msg.Digest = wr.Digest().String()
		}
		data := int64(len(req.Data))
		req.free() // the data is in the store

		if err := session.Send(&msg); err != nil {
			return err
		}
		replied := time.Now()
		s.stats.count(req.Action, data, replied.Sub(received))
		if req.Action == api.WriteAction_COMMIT {
			return nil
		}
		if err := session.RecvMsg(&req); err != nil {
			if err == io.EOF {
				return nil
			}
			return err
		}
		received = time.Now()
		s.stats.waited.Add(int64(received.Sub(replied)))
	}
}

// WriteMetrics say where the time of content writes went on the server:
// for each write message from its arrival in the handler to its reply
// sent (Handle), and between a reply and the client's next message
// (Wait: the round trip through the client and both gRPC stacks).
type WriteMetrics struct {
	Messages    int64 `json:"messages"`
	Bytes       int64 `json:"bytes"`
	HandleNanos int64 `json:"handle_ns"`
	WaitNanos   int64 `json:"wait_ns"`
}

type writeStats struct {
	messages, bytes, handled, waited atomic.Int64
}

func (w *writeStats) count(action api.WriteAction, data int64, handled time.Duration) {
	if action == api.WriteAction_STAT {
		return
	}
	w.messages.Add(1)
	w.bytes.Add(data)
	w.handled.Add(int64(handled))
}

func (w *writeStats) metrics() WriteMetrics {
	return WriteMetrics{Messages: w.messages.Load(), Bytes: w.bytes.Load(), HandleNanos: w.handled.Load(), WaitNanos: w.waited.Load()}
}
