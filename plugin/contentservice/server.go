// Package contentservice serves a content.Store over containerd's content
// gRPC API, the protocol containerd speaks to a "content" proxy plugin. The
// API itself is containerd's own (plugins/services/content/contentserver);
// this package only sets up the gRPC server the way containerd does.
package contentservice

import (
	contentapi "github.com/containerd/containerd/api/services/content/v1"
	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/defaults"
	"github.com/containerd/containerd/v2/plugins/services/content/contentserver"
	"google.golang.org/grpc"
)

// NewServer returns a gRPC server offering cs as containerd's content
// service. Its message limits are containerd's (16 MiB): containerd's proxy
// client writes in chunks of half that and expects replies up to it, and
// gRPC's own 4 MiB default would refuse them.
func NewServer(cs content.Store, opts ...grpc.ServerOption) *grpc.Server {
	srv := grpc.NewServer(append(ServerOptions(), opts...)...)
	Register(srv, cs)
	return srv
}

// ServerOptions are containerd's message limits, for a server that offers
// more than the content service.
func ServerOptions() []grpc.ServerOption {
	return []grpc.ServerOption{
		grpc.MaxRecvMsgSize(defaults.DefaultMaxRecvMsgSize),
		grpc.MaxSendMsgSize(defaults.DefaultMaxSendMsgSize),
	}
}

// Register offers cs as containerd's content service on srv.
func Register(srv *grpc.Server, cs content.Store) {
	contentapi.RegisterContentServer(srv, contentserver.New(cs))
}
