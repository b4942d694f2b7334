package main

// The Pub/Sub half of nimbus-emulators: Google's fake (pstest) behind a gRPC
// server of our own, which fixes the parts of pstest v2.9.0 that Nimbus relies
// on, using only pstest's exported API:
//
//   - Seek to a past time replays the retained messages of the subscription's
//     topic, with their data, attributes, message id and publish time, to that
//     subscription only (pstest re-adds them without bodies and then crashes).
//   - A subscription's RetryPolicy is honoured: a nacked message, or one whose
//     lease ran out, comes back after min_backoff * 2^(attempt-1), capped at
//     max_backoff (pstest redelivers at once, whatever the policy).
//   - A DeadLetterPolicy forwards a message once, after max_delivery_attempts,
//     with the attributes Pub/Sub adds (pstest forwards the same message again
//     every 10 ms for as long as it keeps it). delivery_attempt counts per
//     subscription.
//   - A retry that comes due when pstest would drop the message (it drops any
//     message that becomes available 10 minutes after its publish) is
//     delivered as a re-published copy instead, looking like the original.
//
// Everything else is pstest's own behaviour. README.md lists what differs from
// Pub/Sub.

import (
	"context"
	"fmt"
	"log"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"

	pb "cloud.google.com/go/pubsub/v2/apiv1/pubsubpb"
	"cloud.google.com/go/pubsub/v2/pstest"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// A replayed (or refreshed) message is re-published to its topic with these
// attributes; the front delivers it to the subscription named in the first one
// only, as the original (id, publish time, attributes), and acks it unseen
// everywhere else.
const (
	reservedAttrPrefix = "nimbus-emulator-"
	attrReplayFor      = reservedAttrPrefix + "replay-subscription"
	attrReplayOf       = reservedAttrPrefix + "replay-message-id"
	attrReplayTime     = reservedAttrPrefix + "replay-publish-time"
	attrAttempts       = reservedAttrPrefix + "attempts" // a refreshed retry's count so far
)

// Defaults and bounds of Pub/Sub's RetryPolicy and DeadLetterPolicy.
const (
	defaultMinBackoff      = 10 * time.Second
	defaultMaxBackoff      = 600 * time.Second
	maxBackoffLimit        = 600 * time.Second
	defaultMaxAttempts     = 5
	minMaxDeliveryAttempts = 5
	maxMaxDeliveryAttempts = 100
	// A Seek this close to now on a subscription without retained acked
	// messages is a purge, not a replay (clock skew, request latency).
	seekSkew = 2 * time.Second
	// Deliveries not heard of for this long are forgotten (pstest dropped them).
	trackIdle = time.Hour
	// pstest drops a message that becomes available this long after it was
	// published (retentionDuration in pstest/fake.go, not configurable) ...
	pstestKeeps = 10 * time.Minute
	// ... so a retry released this long after its publish goes out as a copy.
	refreshAfter = pstestKeeps / 2
)

// pubsubFront serves pstest's GServer on its own gRPC server.
type pubsubFront struct {
	ps   *pstest.Server  // started on a private loopback port nobody is told about
	gs   *pstest.GServer // what actually stores topics, subscriptions and messages
	srv  *grpc.Server
	ln   net.Listener
	Addr string
	now  func() time.Time // tests move it; pstest's clock is moved with ps.SetTimeNowFunc

	// Publish holds publishMu shared, Seek exclusively: a Seek's purge and
	// the snapshot of messages it replays see the same set of messages.
	publishMu sync.RWMutex

	mu      sync.Mutex // guards the maps below; never held while calling gs
	subs    map[string]*subState
	tracked map[trackKey]*delivery
	closed  bool
	done    chan struct{}
}

// subState is what the front keeps about a subscription it created.
type subState struct {
	created    time.Time
	retry      *pb.RetryPolicy      // also given to pstest, which ignores it
	deadLetter *pb.DeadLetterPolicy // kept from pstest, which mishandles it
}

func (s *subState) managed() bool { return s != nil && (s.retry != nil || s.deadLetter != nil) }

type trackKey struct{ sub, msgID string }

// delivery follows one message on one subscription that has a retry or
// dead-letter policy.
type delivery struct {
	attempts int               // deliveries the client has seen
	ackID    string            // ack id of the latest of them
	leased   bool              // the latest is with the client (not nacked, not held back)
	msg      *pb.PubsubMessage // as the client saw it
	born     time.Time         // when pstest's copy was published (its 10-minute clock)
	seen     time.Time
}

// newPubsubFront listens on addr and serves a fresh pstest there.
func newPubsubFront(addr string) (*pubsubFront, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("pubsub listen: %w", err)
	}
	ps, err := newPstest()
	if err != nil {
		ln.Close()
		return nil, err
	}
	f := &pubsubFront{
		ps:      ps,
		gs:      &ps.GServer,
		ln:      ln,
		Addr:    ln.Addr().String(),
		now:     time.Now,
		subs:    map[string]*subState{},
		tracked: map[trackKey]*delivery{},
		done:    make(chan struct{}),
	}
	f.srv = grpc.NewServer(
		// The Python client pings every 30 s; grpc-go's default policy
		// (5 min) would answer with GOAWAY on idle connections.
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 10 * time.Second, PermitWithoutStream: true}),
	)
	pb.RegisterPublisherServer(f.srv, publisherFront{PublisherServer: f.gs, f: f})
	pb.RegisterSubscriberServer(f.srv, subscriberFront{SubscriberServer: f.gs, f: f})
	pb.RegisterSchemaServiceServer(f.srv, f.gs)
	go f.srv.Serve(ln) // returns when Close stops it
	go f.pruneLoop()
	return f, nil
}

// newPstest starts pstest on a private port; pstest panics when it cannot
// listen, this turns that into an error.
func newPstest() (s *pstest.Server, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("pubsub: %v", r)
		}
	}()
	return pstest.NewServerWithAddress("127.0.0.1:0"), nil
}

// Close stops serving and drops every stream.
func (f *pubsubFront) Close() {
	f.mu.Lock()
	if f.closed {
		f.mu.Unlock()
		return
	}
	f.closed = true
	close(f.done)
	f.mu.Unlock()
	f.srv.Stop()
	f.ps.Close()
}

func (f *pubsubFront) pruneLoop() {
	t := time.NewTicker(time.Minute)
	defer t.Stop()
	for {
		select {
		case <-f.done:
			return
		case <-t.C:
			cutoff := f.now().Add(-trackIdle)
			f.mu.Lock()
			for k, d := range f.tracked {
				if d.seen.Before(cutoff) {
					delete(f.tracked, k)
				}
			}
			f.mu.Unlock()
		}
	}
}

// ---- publisher ----

type publisherFront struct {
	pb.PublisherServer
	f *pubsubFront
}

func (p publisherFront) Publish(ctx context.Context, req *pb.PublishRequest) (*pb.PublishResponse, error) {
	for _, m := range req.GetMessages() {
		for k := range m.GetAttributes() {
			if strings.HasPrefix(k, reservedAttrPrefix) {
				return nil, status.Errorf(codes.InvalidArgument,
					"attribute %q: keys starting with %q are reserved by nimbus-emulators", k, reservedAttrPrefix)
			}
		}
	}
	return p.f.publish(ctx, req)
}

// publish is the one way messages enter pstest (besides Seek's replays).
func (f *pubsubFront) publish(ctx context.Context, req *pb.PublishRequest) (*pb.PublishResponse, error) {
	f.publishMu.RLock()
	defer f.publishMu.RUnlock()
	return f.gs.Publish(ctx, req)
}

func (p publisherFront) DeleteTopic(ctx context.Context, req *pb.DeleteTopicRequest) (*emptypb.Empty, error) {
	p.f.mu.Lock()
	for name, s := range p.f.subs {
		if s.deadLetter != nil && s.deadLetter.DeadLetterTopic == req.GetTopic() {
			p.f.mu.Unlock()
			return nil, status.Errorf(codes.FailedPrecondition, "topic %q used as deadLetter for %s", req.GetTopic(), name)
		}
	}
	p.f.mu.Unlock()
	return p.PublisherServer.DeleteTopic(ctx, req)
}

// ---- subscriber: configuration ----

type subscriberFront struct {
	pb.SubscriberServer
	f *pubsubFront
}

// checkPolicies validates the policies as Pub/Sub does and returns them
// normalised (copies).
func (f *pubsubFront) checkPolicies(ctx context.Context, rp *pb.RetryPolicy, dl *pb.DeadLetterPolicy) (*pb.RetryPolicy, *pb.DeadLetterPolicy, error) {
	if rp != nil {
		for _, d := range []struct {
			name string
			ok   bool
			v    time.Duration
		}{
			{"minimum_backoff", rp.MinimumBackoff != nil, rp.GetMinimumBackoff().AsDuration()},
			{"maximum_backoff", rp.MaximumBackoff != nil, rp.GetMaximumBackoff().AsDuration()},
		} {
			if d.ok && (d.v < 0 || d.v > maxBackoffLimit) {
				return nil, nil, status.Errorf(codes.InvalidArgument, "retry_policy.%s must be between 0 and 600 seconds, got %v", d.name, d.v)
			}
		}
		rp = proto.Clone(rp).(*pb.RetryPolicy)
	}
	if dl != nil {
		dl = proto.Clone(dl).(*pb.DeadLetterPolicy)
		if dl.MaxDeliveryAttempts == 0 {
			dl.MaxDeliveryAttempts = defaultMaxAttempts
		}
		if dl.MaxDeliveryAttempts < minMaxDeliveryAttempts || dl.MaxDeliveryAttempts > maxMaxDeliveryAttempts {
			return nil, nil, status.Errorf(codes.InvalidArgument,
				"dead_letter_policy.max_delivery_attempts must be between 5 and 100, got %d", dl.MaxDeliveryAttempts)
		}
		if _, err := f.gs.GetTopic(ctx, &pb.GetTopicRequest{Topic: dl.DeadLetterTopic}); err != nil {
			return nil, nil, status.Errorf(codes.NotFound, "deadLetter topic %q", dl.DeadLetterTopic)
		}
	}
	return rp, dl, nil
}

// view is a subscription as clients see it: pstest's, plus the dead-letter
// policy the front keeps.
func (f *pubsubFront) view(s *pb.Subscription) *pb.Subscription {
	if s == nil {
		return nil
	}
	f.mu.Lock()
	st := f.subs[s.Name]
	var dl *pb.DeadLetterPolicy
	if st != nil && st.deadLetter != nil {
		dl = proto.Clone(st.deadLetter).(*pb.DeadLetterPolicy)
	}
	f.mu.Unlock()
	out := proto.Clone(s).(*pb.Subscription)
	out.DeadLetterPolicy = dl
	return out
}

func (s subscriberFront) CreateSubscription(ctx context.Context, in *pb.Subscription) (*pb.Subscription, error) {
	rp, dl, err := s.f.checkPolicies(ctx, in.GetRetryPolicy(), in.GetDeadLetterPolicy())
	if err != nil {
		return nil, err
	}
	req := proto.Clone(in).(*pb.Subscription)
	req.DeadLetterPolicy = nil
	out, err := s.SubscriberServer.CreateSubscription(ctx, req)
	if err != nil {
		return nil, err
	}
	s.f.mu.Lock()
	s.f.subs[out.Name] = &subState{created: s.f.now(), retry: rp, deadLetter: dl}
	s.f.mu.Unlock()
	return s.f.view(out), nil
}

func (s subscriberFront) GetSubscription(ctx context.Context, req *pb.GetSubscriptionRequest) (*pb.Subscription, error) {
	out, err := s.SubscriberServer.GetSubscription(ctx, req)
	if err != nil {
		return nil, err
	}
	return s.f.view(out), nil
}

func (s subscriberFront) ListSubscriptions(ctx context.Context, req *pb.ListSubscriptionsRequest) (*pb.ListSubscriptionsResponse, error) {
	out, err := s.SubscriberServer.ListSubscriptions(ctx, req)
	if err != nil {
		return nil, err
	}
	res := &pb.ListSubscriptionsResponse{NextPageToken: out.NextPageToken}
	for _, sub := range out.Subscriptions {
		res.Subscriptions = append(res.Subscriptions, s.f.view(sub))
	}
	return res, nil
}

func (s subscriberFront) UpdateSubscription(ctx context.Context, req *pb.UpdateSubscriptionRequest) (*pb.Subscription, error) {
	if req.GetSubscription() == nil {
		return nil, status.Error(codes.InvalidArgument, "missing subscription")
	}
	if len(req.GetUpdateMask().GetPaths()) == 0 {
		return nil, status.Error(codes.InvalidArgument, "update_mask must name at least one field")
	}
	name := req.Subscription.Name
	var setDL, setRetry bool
	var rp *pb.RetryPolicy
	var dl *pb.DeadLetterPolicy
	var paths []string
	for _, p := range req.UpdateMask.Paths {
		switch p {
		case "dead_letter_policy":
			setDL = true
			continue // the front keeps it; pstest never sees it
		case "retry_policy":
			setRetry = true
		}
		paths = append(paths, p)
	}
	// Validate only what the mask changes.
	if setRetry {
		rp = req.Subscription.GetRetryPolicy()
	}
	if setDL {
		dl = req.Subscription.GetDeadLetterPolicy()
	}
	rp, dl, err := s.f.checkPolicies(ctx, rp, dl)
	if err != nil {
		return nil, err
	}
	fwd := proto.Clone(req).(*pb.UpdateSubscriptionRequest)
	fwd.Subscription.DeadLetterPolicy = nil
	fwd.UpdateMask.Paths = paths
	out, err := s.SubscriberServer.UpdateSubscription(ctx, fwd)
	if err != nil {
		return nil, err
	}
	s.f.mu.Lock()
	st := s.f.subs[name]
	if st == nil {
		st = &subState{}
		s.f.subs[name] = st
	}
	if setDL {
		st.deadLetter = dl
	}
	if setRetry {
		st.retry = rp
	}
	s.f.mu.Unlock()
	return s.f.view(out), nil
}

func (s subscriberFront) DeleteSubscription(ctx context.Context, req *pb.DeleteSubscriptionRequest) (*emptypb.Empty, error) {
	out, err := s.SubscriberServer.DeleteSubscription(ctx, req)
	if err != nil {
		return nil, err
	}
	s.f.mu.Lock()
	delete(s.f.subs, req.GetSubscription())
	s.f.forgetLocked(req.GetSubscription())
	s.f.mu.Unlock()
	return out, nil
}

// forgetLocked drops what the front follows for sub's messages.
func (f *pubsubFront) forgetLocked(sub string) {
	for k := range f.tracked {
		if k.sub == sub {
			delete(f.tracked, k)
		}
	}
}

// ---- subscriber: deliveries, acks, nacks ----

func (s subscriberFront) Pull(ctx context.Context, req *pb.PullRequest) (*pb.PullResponse, error) {
	res, err := s.SubscriberServer.Pull(ctx, req)
	if err != nil || len(res.GetReceivedMessages()) == 0 {
		return res, err
	}
	out, later := s.f.outgoing(req.Subscription, res.ReceivedMessages)
	run(later)
	return &pb.PullResponse{ReceivedMessages: out}, nil
}

func (s subscriberFront) Acknowledge(ctx context.Context, req *pb.AcknowledgeRequest) (*emptypb.Empty, error) {
	s.f.acked(req.GetSubscription(), req.GetAckIds())
	return s.SubscriberServer.Acknowledge(ctx, req)
}

func (s subscriberFront) ModifyAckDeadline(ctx context.Context, req *pb.ModifyAckDeadlineRequest) (*emptypb.Empty, error) {
	if req.GetAckDeadlineSeconds() != 0 {
		s.f.extended(req.GetSubscription(), req.GetAckIds())
		return s.SubscriberServer.ModifyAckDeadline(ctx, req)
	}
	rest, later := s.f.nacked(req.GetSubscription(), req.GetAckIds())
	run(later)
	if len(rest) == len(req.GetAckIds()) {
		return s.SubscriberServer.ModifyAckDeadline(ctx, req)
	}
	if len(rest) > 0 {
		fwd := proto.Clone(req).(*pb.ModifyAckDeadlineRequest)
		fwd.AckIds = rest
		return s.SubscriberServer.ModifyAckDeadline(ctx, fwd)
	}
	// Still answer NotFound for an unknown subscription.
	if _, err := s.SubscriberServer.GetSubscription(ctx, &pb.GetSubscriptionRequest{Subscription: req.GetSubscription()}); err != nil {
		return nil, err
	}
	return &emptypb.Empty{}, nil
}

func (s subscriberFront) StreamingPull(stream pb.Subscriber_StreamingPullServer) error {
	return s.SubscriberServer.StreamingPull(&pullStream{Subscriber_StreamingPullServer: stream, f: s.f})
}

// pullStream sits between pstest's StreamingPull and the client.
type pullStream struct {
	pb.Subscriber_StreamingPullServer
	f   *pubsubFront
	sub string // from the first request
}

// Recv runs on pstest's receive goroutine, outside pstest's lock.
func (p *pullStream) Recv() (*pb.StreamingPullRequest, error) {
	req, err := p.Subscriber_StreamingPullServer.Recv()
	if err != nil {
		return nil, err
	}
	if p.sub == "" {
		p.sub = req.GetSubscription()
	}
	if len(req.AckIds) > 0 {
		p.f.acked(p.sub, req.AckIds)
	}
	if len(req.ModifyDeadlineAckIds) > 0 && len(req.ModifyDeadlineAckIds) == len(req.ModifyDeadlineSeconds) {
		var nacks, ids []string
		var secs []int32
		for i, id := range req.ModifyDeadlineAckIds {
			if req.ModifyDeadlineSeconds[i] == 0 {
				nacks = append(nacks, id)
			} else {
				ids = append(ids, id)
				secs = append(secs, req.ModifyDeadlineSeconds[i])
			}
		}
		p.f.extended(p.sub, ids)
		if len(nacks) > 0 {
			rest, later := p.f.nacked(p.sub, nacks)
			run(later)
			for _, id := range rest {
				ids = append(ids, id)
				secs = append(secs, 0)
			}
			req.ModifyDeadlineAckIds, req.ModifyDeadlineSeconds = ids, secs
		}
	}
	return req, nil
}

// Send runs on pstest's send goroutine while another of pstest's goroutines
// may hold its lock waiting for this one, so follow-up calls into pstest run
// on their own goroutine.
func (p *pullStream) Send(res *pb.StreamingPullResponse) error {
	if len(res.GetReceivedMessages()) == 0 {
		return p.Subscriber_StreamingPullServer.Send(res)
	}
	out, later := p.f.outgoing(p.sub, res.ReceivedMessages)
	if len(later) > 0 {
		go run(later)
	}
	if len(out) == 0 {
		return nil
	}
	return p.Subscriber_StreamingPullServer.Send(&pb.StreamingPullResponse{
		ReceivedMessages:       out,
		SubscriptionProperties: res.SubscriptionProperties,
	})
}

func run(fns []func()) {
	for _, fn := range fns {
		fn()
	}
}

// outgoing decides what the client on sub gets of the messages pstest hands
// out, and what to tell pstest afterwards (never under f.mu).
func (f *pubsubFront) outgoing(sub string, in []*pb.ReceivedMessage) (out []*pb.ReceivedMessage, later []func()) {
	now := f.now()
	f.mu.Lock()
	defer f.mu.Unlock()
	st := f.subs[sub]
	for _, rm := range in {
		if rm.GetMessage() == nil {
			out = append(out, rm)
			continue
		}
		msg := rm.Message
		carried := 0 // attempts a refreshed retry had before
		if target, ok := msg.Attributes[attrReplayFor]; ok {
			if target != sub {
				later = append(later, f.ackLater(sub, rm.AckId))
				continue
			}
			carried, _ = strconv.Atoi(msg.Attributes[attrAttempts])
			msg = replayView(msg)
		}
		if !st.managed() {
			if msg != rm.Message {
				rm = &pb.ReceivedMessage{AckId: rm.AckId, Message: msg, DeliveryAttempt: rm.DeliveryAttempt}
			}
			out = append(out, rm)
			continue
		}
		key := trackKey{sub, rm.Message.MessageId}
		d := f.tracked[key]
		if d != nil && d.leased {
			// Back again without an ack or a nack: its lease ran out, which
			// counts as a failed attempt.
			if st.deadLetter != nil && d.attempts >= int(st.deadLetter.MaxDeliveryAttempts) {
				later = append(later, f.deadLetterLater(sub, st.deadLetter, d.msg, d.attempts, rm.AckId))
				delete(f.tracked, key)
				continue
			}
			if wait := backoff(st.retry, d.attempts); wait > 0 {
				d.ackID, d.leased, d.seen = rm.AckId, false, now
				later = append(later, f.holdLater(sub, rm.AckId, wait, *d))
				continue
			}
		}
		if d == nil {
			d = &delivery{attempts: carried}
			f.tracked[key] = d
		}
		d.attempts++
		d.ackID, d.leased, d.msg, d.seen = rm.AckId, true, msg, now
		d.born = rm.Message.GetPublishTime().AsTime()
		var attempt int32
		if st.deadLetter != nil {
			attempt = int32(d.attempts)
		}
		out = append(out, &pb.ReceivedMessage{AckId: rm.AckId, Message: msg, DeliveryAttempt: attempt})
	}
	return out, later
}

// nacked handles the nacks it has a policy for and returns the ack ids to
// pass on to pstest as plain nacks.
func (f *pubsubFront) nacked(sub string, ackIDs []string) (rest []string, later []func()) {
	f.mu.Lock()
	defer f.mu.Unlock()
	st := f.subs[sub]
	if !st.managed() {
		return ackIDs, nil
	}
	for _, id := range ackIDs {
		key := trackKey{sub, msgIDOf(id)}
		d := f.tracked[key]
		if d == nil || d.ackID != id || !d.leased {
			rest = append(rest, id) // unknown or stale: pstest ignores or handles it
			continue
		}
		d.leased = false
		if st.deadLetter != nil && d.attempts >= int(st.deadLetter.MaxDeliveryAttempts) {
			later = append(later, f.deadLetterLater(sub, st.deadLetter, d.msg, d.attempts, id))
			delete(f.tracked, key)
			continue
		}
		if wait := backoff(st.retry, d.attempts); wait > 0 {
			later = append(later, f.holdLater(sub, id, wait, *d))
			continue
		}
		if f.now().Sub(d.born) >= refreshAfter {
			snap := *d
			later = append(later, func() { f.release(sub, id, snap) })
			continue
		}
		rest = append(rest, id)
	}
	return rest, later
}

func (f *pubsubFront) acked(sub string, ackIDs []string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, id := range ackIDs {
		key := trackKey{sub, msgIDOf(id)}
		if d := f.tracked[key]; d != nil && d.ackID == id {
			delete(f.tracked, key)
		}
	}
}

func (f *pubsubFront) extended(sub string, ackIDs []string) {
	if len(ackIDs) == 0 {
		return
	}
	now := f.now()
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, id := range ackIDs {
		if d := f.tracked[trackKey{sub, msgIDOf(id)}]; d != nil && d.ackID == id {
			d.seen = now
		}
	}
}

// backoff is the wait before redelivering a message that failed its
// attempts-th delivery: min_backoff doubled per earlier failure, capped at
// max_backoff. Without a RetryPolicy Pub/Sub redelivers at once.
func backoff(rp *pb.RetryPolicy, attempts int) time.Duration {
	if rp == nil {
		return 0
	}
	lo, hi := defaultMinBackoff, defaultMaxBackoff
	if rp.MinimumBackoff != nil {
		lo = rp.MinimumBackoff.AsDuration()
	}
	if rp.MaximumBackoff != nil {
		hi = rp.MaximumBackoff.AsDuration()
	}
	wait := lo
	for i := 1; i < attempts && wait < hi; i++ {
		wait *= 2
	}
	if wait > hi {
		wait = hi
	}
	return wait
}

// holdLater keeps the message leased (so pstest does not redeliver it) and
// releases it once wait has passed.
func (f *pubsubFront) holdLater(sub, ackID string, wait time.Duration, d delivery) func() {
	return func() {
		secs := int32((wait+time.Second-1)/time.Second) + 1
		_, _ = f.gs.ModifyAckDeadline(context.Background(), &pb.ModifyAckDeadlineRequest{Subscription: sub, AckIds: []string{ackID}, AckDeadlineSeconds: secs})
		time.AfterFunc(wait, func() {
			select {
			case <-f.done:
			default:
				f.release(sub, ackID, d)
			}
		})
	}
}

// release makes a held-back or nacked message deliverable again: a nack in
// pstest, or, if pstest would drop it on the spot for its age, a copy
// re-published for sub alone carrying the attempts so far (delivered as the
// original) and an ack of the old one. If it was acked or purged meanwhile,
// pstest ignores the nack, and a copy is not made.
func (f *pubsubFront) release(sub, ackID string, d delivery) {
	ctx := context.Background()
	if f.now().Sub(d.born) < refreshAfter || d.msg == nil {
		_, _ = f.gs.ModifyAckDeadline(ctx, &pb.ModifyAckDeadlineRequest{Subscription: sub, AckIds: []string{ackID}})
		return
	}
	key := trackKey{sub, msgIDOf(ackID)}
	f.mu.Lock()
	cur := f.tracked[key]
	current := cur != nil && cur.ackID == ackID && !cur.leased
	if current {
		delete(f.tracked, key)
	}
	f.mu.Unlock()
	if !current {
		return // acked, purged, or already handled
	}
	topic := ""
	if s, err := f.gs.GetSubscription(ctx, &pb.GetSubscriptionRequest{Subscription: sub}); err == nil {
		topic = s.Topic
	}
	attrs := make(map[string]string, len(d.msg.Attributes)+4)
	for k, v := range d.msg.Attributes {
		attrs[k] = v
	}
	attrs[attrReplayFor] = sub
	attrs[attrReplayOf] = d.msg.MessageId
	attrs[attrReplayTime] = d.msg.GetPublishTime().AsTime().UTC().Format(time.RFC3339Nano)
	attrs[attrAttempts] = strconv.Itoa(d.attempts)
	_, err := f.publish(ctx, &pb.PublishRequest{Topic: topic, Messages: []*pb.PubsubMessage{{
		Data: d.msg.Data, Attributes: attrs, OrderingKey: d.msg.OrderingKey,
	}}})
	if err != nil {
		log.Printf("re-publishing %s for %s: %v; nacking it instead", d.msg.MessageId, sub, err)
		_, _ = f.gs.ModifyAckDeadline(ctx, &pb.ModifyAckDeadlineRequest{Subscription: sub, AckIds: []string{ackID}})
		return
	}
	_, _ = f.gs.Acknowledge(ctx, &pb.AcknowledgeRequest{Subscription: sub, AckIds: []string{ackID}})
}

func (f *pubsubFront) ackLater(sub, ackID string) func() {
	return func() {
		_, _ = f.gs.Acknowledge(context.Background(), &pb.AcknowledgeRequest{Subscription: sub, AckIds: []string{ackID}})
	}
}

// deadLetterLater publishes msg to the dead-letter topic as Pub/Sub does (new
// message id and publish time, the CloudPubSubDeadLetter* attributes added),
// then acks it on sub.
func (f *pubsubFront) deadLetterLater(sub string, dl *pb.DeadLetterPolicy, msg *pb.PubsubMessage, attempts int, ackID string) func() {
	topic := dl.DeadLetterTopic
	return func() {
		attrs := make(map[string]string, len(msg.Attributes)+4)
		for k, v := range msg.Attributes {
			attrs[k] = v
		}
		project, subID := splitName(sub, "subscriptions")
		attrs["CloudPubSubDeadLetterSourceDeliveryCount"] = strconv.Itoa(attempts)
		attrs["CloudPubSubDeadLetterSourceSubscription"] = subID
		attrs["CloudPubSubDeadLetterSourceSubscriptionProject"] = project
		attrs["CloudPubSubDeadLetterSourceTopicPublishTime"] = msg.GetPublishTime().AsTime().UTC().Format("2006-01-02T15:04:05.000-07:00")
		_, err := f.publish(context.Background(), &pb.PublishRequest{Topic: topic, Messages: []*pb.PubsubMessage{{
			Data: msg.Data, Attributes: attrs, OrderingKey: msg.OrderingKey,
		}}})
		if err != nil {
			// Leave it on sub: it comes back and is counted from 1 again.
			log.Printf("dead-letter %s from %s to %s: %v; message left on the subscription", msg.MessageId, sub, topic, err)
			_, _ = f.gs.ModifyAckDeadline(context.Background(), &pb.ModifyAckDeadlineRequest{Subscription: sub, AckIds: []string{ackID}})
			return
		}
		_, _ = f.gs.Acknowledge(context.Background(), &pb.AcknowledgeRequest{Subscription: sub, AckIds: []string{ackID}})
	}
}

// replayView is a replayed message as its subscription sees it: the original.
func replayView(m *pb.PubsubMessage) *pb.PubsubMessage {
	out := &pb.PubsubMessage{
		Data:        m.Data,
		Attributes:  make(map[string]string, len(m.Attributes)),
		MessageId:   m.Attributes[attrReplayOf],
		PublishTime: m.PublishTime,
		OrderingKey: m.OrderingKey,
	}
	for k, v := range m.Attributes {
		if !strings.HasPrefix(k, reservedAttrPrefix) {
			out.Attributes[k] = v
		}
	}
	if t, err := time.Parse(time.RFC3339Nano, m.Attributes[attrReplayTime]); err == nil {
		out.PublishTime = timestamppb.New(t)
	}
	return out
}

// msgIDOf is the message id in one of pstest's ack ids ("<id>:<n>").
func msgIDOf(ackID string) string {
	if i := strings.LastIndex(ackID, ":"); i >= 0 {
		return ackID[:i]
	}
	return ackID
}

// splitName splits "projects/P/<kind>/ID" into P and ID.
func splitName(name, kind string) (project, id string) {
	parts := strings.Split(name, "/")
	if len(parts) == 4 && parts[0] == "projects" && parts[2] == kind {
		return parts[1], parts[3]
	}
	return "", name
}

// ---- subscriber: Seek ----

// Seek to a time marks every message published before it as acknowledged and
// every retained one published at or after it as not: the latter are
// delivered again. pstest's own Seek cannot be used for a past time, so:
//
//  1. with publishing paused, pstest's Seek purges the whole backlog of the
//     subscription (a time past every message, so it re-adds none);
//  2. every retained message of the topic published at or after the target is
//     re-published to the topic, tagged for this subscription; the front
//     delivers the copies to it alone, as the originals.
//
// A message is retained if it was published within the subscription's
// message_retention_duration, after the subscription was created, and the
// subscription has retain_acked_messages; or within the topic's
// message_retention_duration.
func (s subscriberFront) Seek(ctx context.Context, req *pb.SeekRequest) (*pb.SeekResponse, error) {
	tt, ok := req.GetTarget().(*pb.SeekRequest_Time)
	if !ok {
		return s.SubscriberServer.Seek(ctx, req) // nil target or snapshot: pstest answers
	}
	if tt.Time == nil {
		return nil, status.Error(codes.InvalidArgument, "missing Seek time")
	}
	return s.f.seek(ctx, req.GetSubscription(), tt.Time.AsTime())
}

func (f *pubsubFront) seek(ctx context.Context, name string, target time.Time) (*pb.SeekResponse, error) {
	f.publishMu.Lock()
	defer f.publishMu.Unlock()

	sub, err := f.gs.GetSubscription(ctx, &pb.GetSubscriptionRequest{Subscription: name})
	if err != nil {
		return nil, err
	}
	now := f.now()
	var replay []*pstest.Message
	if target.Before(now) {
		if replay, err = f.retained(ctx, sub, target, now); err != nil {
			return nil, err
		}
	}
	purge := target
	if min := now.Add(time.Second); purge.Before(min) {
		purge = min
	}
	if _, err := f.gs.Seek(ctx, &pb.SeekRequest{Subscription: name, Target: &pb.SeekRequest_Time{Time: timestamppb.New(purge)}}); err != nil {
		return nil, err
	}
	f.mu.Lock()
	f.forgetLocked(name)
	f.mu.Unlock()
	if len(replay) == 0 {
		return &pb.SeekResponse{}, nil
	}
	copies := make([]*pb.PubsubMessage, 0, len(replay))
	for _, m := range replay {
		attrs := make(map[string]string, len(m.Attributes)+3)
		for k, v := range m.Attributes {
			attrs[k] = v
		}
		attrs[attrReplayFor] = name
		attrs[attrReplayOf] = m.ID
		attrs[attrReplayTime] = m.PublishTime.UTC().Format(time.RFC3339Nano)
		copies = append(copies, &pb.PubsubMessage{Data: m.Data, Attributes: attrs, OrderingKey: m.OrderingKey})
	}
	if _, err := f.gs.Publish(ctx, &pb.PublishRequest{Topic: sub.Topic, Messages: copies}); err != nil {
		return nil, status.Errorf(codes.Internal, "replaying %d messages to %s: %v", len(copies), name, err)
	}
	log.Printf("seek %s to %s: replaying %d message(s)", name, target.UTC().Format(time.RFC3339Nano), len(copies))
	return &pb.SeekResponse{}, nil
}

// retained lists, in publish order, the messages a Seek of sub to target
// (before now) delivers again.
func (f *pubsubFront) retained(ctx context.Context, sub *pb.Subscription, target, now time.Time) ([]*pstest.Message, error) {
	var topicKeep time.Duration
	if t, err := f.gs.GetTopic(ctx, &pb.GetTopicRequest{Topic: sub.Topic}); err == nil && t.MessageRetentionDuration != nil {
		topicKeep = t.MessageRetentionDuration.AsDuration()
	}
	var subKeep time.Duration
	var created time.Time
	if sub.RetainAckedMessages {
		subKeep = sub.GetMessageRetentionDuration().AsDuration()
		f.mu.Lock()
		if st := f.subs[sub.Name]; st != nil {
			created = st.created
		}
		f.mu.Unlock()
	}
	if subKeep == 0 && topicKeep == 0 {
		if now.Sub(target) <= seekSkew {
			return nil, nil // "seek to now": a purge
		}
		return nil, status.Errorf(codes.FailedPrecondition,
			"nimbus-emulators replays only on subscriptions with retain_acked_messages=true (or topics with message_retention_duration); "+
				"%s has neither, so a Seek to a past time (%s) is not supported (seek to now or later to purge it)",
			sub.Name, target.UTC().Format(time.RFC3339Nano))
	}
	var out []*pstest.Message
	for _, m := range f.ps.Messages() {
		if m.Topic != sub.Topic || m.Attributes[attrReplayFor] != "" || m.PublishTime.Before(target) {
			continue
		}
		age := now.Sub(m.PublishTime)
		byTopic := topicKeep > 0 && age <= topicKeep
		bySub := subKeep > 0 && age <= subKeep && !m.PublishTime.Before(created)
		if byTopic || bySub {
			out = append(out, m)
		}
	}
	return out, nil
}
