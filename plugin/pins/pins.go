// Package pins is the small gRPC service precopyd serves beside
// containerd's content and snapshots APIs, on the same root-only socket:
// precopy's shim asks it to pin a container's writable layer (see
// snapshotter.Pin) while the container is frozen after its final dump,
// and to unpin it when the checkpoint is over.
//
// The service is described by hand (grpc.ServiceDesc) with protobuf's
// well-known types as messages: two calls with one string each do not
// justify a .proto file and generated code in this repository.
package pins

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/containerd/errdefs/pkg/errgrpc"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// ServiceName is the gRPC service's full name.
const ServiceName = "precopy.pins.v1.Pins"

// Pinner is what the service serves: snapshotter.Snapshotter.
type Pinner interface {
	Pin(ctx context.Context, upper string, ttl time.Duration) (time.Duration, error)
	Unpin(ctx context.Context, upper string) error
}

type server struct {
	p   Pinner
	ttl time.Duration
}

// Register serves p on s; a pin not released within ttl is released then.
func Register(s *grpc.Server, p Pinner, ttl time.Duration) {
	s.RegisterService(&serviceDesc, &server{p: p, ttl: ttl})
}

func (s *server) pin(ctx context.Context, upper *wrapperspb.StringValue) (*durationpb.Duration, error) {
	cost, err := s.p.Pin(ctx, upper.GetValue(), s.ttl)
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	return durationpb.New(cost), nil
}

func (s *server) unpin(ctx context.Context, upper *wrapperspb.StringValue) (*emptypb.Empty, error) {
	if err := s.p.Unpin(ctx, upper.GetValue()); err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	return &emptypb.Empty{}, nil
}

var serviceDesc = grpc.ServiceDesc{
	ServiceName: ServiceName,
	HandlerType: (*any)(nil),
	Methods: []grpc.MethodDesc{
		{MethodName: "Pin", Handler: handler((*server).pin)},
		{MethodName: "Unpin", Handler: handler((*server).unpin)},
	},
	Metadata: "precopy/pins.v1 (described by hand)",
}

// handler adapts a method taking a string to grpc's unary handler.
func handler[R any](call func(*server, context.Context, *wrapperspb.StringValue) (R, error)) func(any, context.Context, func(any) error, grpc.UnaryServerInterceptor) (any, error) {
	return func(srv any, ctx context.Context, dec func(any) error, interceptor grpc.UnaryServerInterceptor) (any, error) {
		in := new(wrapperspb.StringValue)
		if err := dec(in); err != nil {
			return nil, err
		}
		s := srv.(*server)
		if interceptor == nil {
			return call(s, ctx, in)
		}
		info := &grpc.UnaryServerInfo{Server: srv}
		return interceptor(ctx, in, info, func(ctx context.Context, req any) (any, error) {
			return call(s, ctx, req.(*wrapperspb.StringValue))
		})
	}
}

// UpperDir is the key of a pin: the writable dir of an active snapshot's
// mount as containerd's overlay snapshotter returns it, and as the shim
// receives it in a task's rootfs: the upperdir of an overlay mount, or
// the source of the read-write bind mount overlay uses for a snapshot
// without parents. "" for anything else (a view, another snapshotter's
// mounts).
func UpperDir(mountType, source string, options []string) string {
	switch mountType {
	case "overlay":
		for _, o := range options {
			if v, ok := strings.CutPrefix(o, "upperdir="); ok {
				return v
			}
		}
	case "bind":
		if !slices.Contains(options, "ro") {
			return source
		}
	}
	return ""
}

// Client calls precopyd's pins service.
type Client struct{ conn *grpc.ClientConn }

// Dial connects to precopyd at the unix socket address. It does not wait:
// an unreachable precopyd shows in the first call.
func Dial(address string) (*Client, error) {
	conn, err := grpc.NewClient("unix://"+address, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, fmt.Errorf("precopyd at %s: %w", address, err)
	}
	return &Client{conn: conn}, nil
}

// Connect starts connecting now rather than at the first call, so that a
// pin made while a container is frozen does not pay the handshake.
func (c *Client) Connect() { c.conn.Connect() }

// Pin pins the writable layer whose overlay upper dir is upper and
// returns what copying it cost precopyd.
func (c *Client) Pin(ctx context.Context, upper string) (time.Duration, error) {
	var cost durationpb.Duration
	if err := c.conn.Invoke(ctx, "/"+ServiceName+"/Pin", wrapperspb.String(upper), &cost); err != nil {
		return 0, errgrpc.ToNative(err)
	}
	return cost.AsDuration(), nil
}

// Unpin releases the pin of upper.
func (c *Client) Unpin(ctx context.Context, upper string) error {
	return errgrpc.ToNative(c.conn.Invoke(ctx, "/"+ServiceName+"/Unpin", wrapperspb.String(upper), &emptypb.Empty{}))
}

// Close closes the connection.
func (c *Client) Close() error { return c.conn.Close() }
