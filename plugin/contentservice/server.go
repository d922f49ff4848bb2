// Package contentservice serves a content.Store over containerd's content
// gRPC API, the protocol containerd speaks to a "content" proxy plugin. The
// API is containerd's own (plugins/services/content/contentserver), served
// by containerd's code but for Write, which is rewritten to make each write
// of a stream cheaper (write.go), on a gRPC server set up for the API's
// data-carrying messages (codec, bufferPool).
package contentservice

import (
	contentapi "github.com/containerd/containerd/api/services/content/v1"
	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/defaults"
	"github.com/containerd/containerd/v2/plugins/services/content/contentserver"
	"google.golang.org/grpc"
	"google.golang.org/grpc/experimental"
)

// NewServer returns a gRPC server offering cs as containerd's content
// service, with ServerOptions.
func NewServer(cs content.Store, opts ...grpc.ServerOption) (*grpc.Server, *Service) {
	srv := grpc.NewServer(append(ServerOptions(), opts...)...)
	return srv, Register(srv, cs)
}

// ServerOptions are what a gRPC server offering the content service needs,
// whatever else it offers:
//   - containerd's message limits (16 MiB): containerd's proxy client writes
//     in chunks of half that and expects replies up to it, and gRPC's own
//     4 MiB default would refuse them;
//   - the codec and buffer pool, which take the allocation and clearing of
//     buffers off every message (codec.go, pool.go); messages of other
//     services are encoded as gRPC's own codec does;
//   - read and write buffers of 256 KiB per connection instead of 32 KiB:
//     a blob streamed in one Read call (1 MiB messages, as containerd's
//     proxy would read with the change in docs/storage) went 15-20 %
//     faster across processes, in fewer read and write system calls; with
//     containerd's 32 KiB calls they changed nothing measurable.
//
// Other settings were measured across processes (plugin/contentservice
// benchmarks against a separate server) and left at gRPC's defaults, as
// none moved 32 KiB writes, 1 MiB writes or 32 KiB reads beyond the noise
// of this shared 2-CPU machine: stream workers (NumStreamWorkers),
// static windows of 16 MiB (which also stop the BDP pings), a shared write
// buffer, and GOMAXPROCS=1 for the whole daemon.
func ServerOptions() []grpc.ServerOption {
	return []grpc.ServerOption{
		grpc.MaxRecvMsgSize(defaults.DefaultMaxRecvMsgSize),
		grpc.MaxSendMsgSize(defaults.DefaultMaxSendMsgSize),
		grpc.ForceServerCodecV2(codec{}),
		experimental.BufferPool(pool),
		grpc.ReadBufferSize(connBufferSize),
		grpc.WriteBufferSize(connBufferSize),
	}
}

// connBufferSize is the size of a connection's read and write buffers.
const connBufferSize = 256 << 10

// Service is containerd's content service offering a store.
type Service struct {
	contentapi.ContentServer // containerd's, for all but Write
	store                    content.Store
	stats                    writeStats
}

// Register offers cs as containerd's content service on srv.
func Register(srv *grpc.Server, cs content.Store) *Service {
	s := &Service{ContentServer: contentserver.New(cs), store: cs}
	contentapi.RegisterContentServer(srv, s)
	return s
}

// Metrics are the counts of the content writes served so far.
func (s *Service) Metrics() WriteMetrics { return s.stats.metrics() }
