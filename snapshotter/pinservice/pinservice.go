// Package pinservice is the small gRPC service precopyd serves beside
// containerd's content and snapshots APIs, on the same root-only socket,
// and its client: precopy's shim asks it to pin a container's writable
// layer on precopyd's snapshotter (see snapshotter.Pin) while the
// container is frozen after its final dump, and to unpin it when the
// checkpoint is over.
//
// The service is described by hand (grpc.ServiceDesc) with protobuf's
// well-known types as messages: two calls with one string each, and a
// result of a few numbers, do not justify a .proto file and generated
// code in this repository.
package pinservice

import (
	"context"
	"fmt"
	"time"

	"github.com/containerd/errdefs/pkg/errgrpc"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/precopy/precopy/snapshotter/pin"
)

// ServiceName is the gRPC service's full name.
const ServiceName = "precopy.pins.v1.Pins"

// Pinner is what the service serves: snapshotter.Snapshotter.
type Pinner interface {
	Pin(ctx context.Context, upper string, ttl time.Duration) (pin.Result, error)
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

func (s *server) pin(ctx context.Context, upper *wrapperspb.StringValue) (*structpb.Struct, error) {
	res, err := s.p.Pin(ctx, upper.GetValue(), s.ttl)
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	return toStruct(res), nil
}

// A pin's result crosses as a Struct of these fields. Its numbers are
// doubles: exact up to 2^53 (bytes, files, nanoseconds of cost).
const (
	fieldBytes    = "bytes"
	fieldApparent = "apparent_bytes"
	fieldFiles    = "files"
	fieldCost     = "cost_ns"
	fieldWhere    = "where"
)

func toStruct(r pin.Result) *structpb.Struct {
	return &structpb.Struct{Fields: map[string]*structpb.Value{
		fieldBytes:    structpb.NewNumberValue(float64(r.Bytes)),
		fieldApparent: structpb.NewNumberValue(float64(r.ApparentBytes)),
		fieldFiles:    structpb.NewNumberValue(float64(r.Files)),
		fieldCost:     structpb.NewNumberValue(float64(r.Cost)),
		fieldWhere:    structpb.NewStringValue(r.Where),
	}}
}

func fromStruct(s *structpb.Struct) pin.Result {
	f := s.GetFields()
	return pin.Result{
		Size: pin.Size{
			Bytes:         int64(f[fieldBytes].GetNumberValue()),
			ApparentBytes: int64(f[fieldApparent].GetNumberValue()),
			Files:         int(f[fieldFiles].GetNumberValue()),
		},
		Cost:  time.Duration(f[fieldCost].GetNumberValue()),
		Where: f[fieldWhere].GetStringValue(),
	}
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
// returns what precopyd copied, where, and what it cost. A layer over
// precopyd's limit is refused with errdefs.ErrFailedPrecondition (the
// message says the size and the limit; pin.ErrTooLarge itself does not
// cross gRPC).
func (c *Client) Pin(ctx context.Context, upper string) (pin.Result, error) {
	var res structpb.Struct
	if err := c.conn.Invoke(ctx, "/"+ServiceName+"/Pin", wrapperspb.String(upper), &res); err != nil {
		return pin.Result{}, errgrpc.ToNative(err)
	}
	return fromStruct(&res), nil
}

// Unpin releases the pin of upper.
func (c *Client) Unpin(ctx context.Context, upper string) error {
	return errgrpc.ToNative(c.conn.Invoke(ctx, "/"+ServiceName+"/Unpin", wrapperspb.String(upper), &emptypb.Empty{}))
}

// Close closes the connection.
func (c *Client) Close() error { return c.conn.Close() }
