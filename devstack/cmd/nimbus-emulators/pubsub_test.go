package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log"
	"maps"
	"os"
	"sort"
	"strconv"
	"sync"
	"testing"
	"time"

	"cloud.google.com/go/pubsub/v2"
	pb "cloud.google.com/go/pubsub/v2/apiv1/pubsubpb"
	"google.golang.org/api/option"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/fieldmaskpb"
	"google.golang.org/protobuf/types/known/timestamppb"
)

const project = "nimbus-local"

// TestMain keeps the emulator's log lines (one per replay) out of the test
// output unless -v.
func TestMain(m *testing.M) {
	flag.Parse()
	if !testing.Verbose() {
		log.SetOutput(io.Discard)
	}
	os.Exit(m.Run())
}

func topicName(id string) string { return "projects/" + project + "/topics/" + id }
func subName(id string) string   { return "projects/" + project + "/subscriptions/" + id }

// fixture is an in-process Pub/Sub front with both a high-level client (what
// the worker's streaming pull does) and the raw gRPC stubs.
type fixture struct {
	f      *pubsubFront
	client *pubsub.Client
	pub    pb.PublisherClient
	sub    pb.SubscriberClient
	conn   *grpc.ClientConn
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	f, err := newPubsubFront("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient(f.Addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	client, err := pubsub.NewClient(context.Background(), project, option.WithGRPCConn(conn))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		client.Close()
		conn.Close()
		f.Close()
	})
	return &fixture{f: f, client: client, pub: pb.NewPublisherClient(conn), sub: pb.NewSubscriberClient(conn), conn: conn}
}

func (x *fixture) topic(t *testing.T, id string) string {
	t.Helper()
	if _, err := x.pub.CreateTopic(context.Background(), &pb.Topic{Name: topicName(id)}); err != nil {
		t.Fatal(err)
	}
	return topicName(id)
}

func (x *fixture) subscription(t *testing.T, s *pb.Subscription) *pb.Subscription {
	t.Helper()
	out, err := x.sub.CreateSubscription(context.Background(), s)
	if err != nil {
		t.Fatalf("create %s: %v", s.Name, err)
	}
	return out
}

func (x *fixture) publish(t *testing.T, topic, data string, attrs map[string]string) string {
	t.Helper()
	res, err := x.pub.Publish(context.Background(), &pb.PublishRequest{Topic: topic, Messages: []*pb.PubsubMessage{{Data: []byte(data), Attributes: attrs}}})
	if err != nil {
		t.Fatal(err)
	}
	return res.MessageIds[0]
}

func (x *fixture) seek(t *testing.T, sub string, to time.Time) error {
	t.Helper()
	_, err := x.sub.Seek(context.Background(), &pb.SeekRequest{Subscription: sub, Target: &pb.SeekRequest_Time{Time: timestamppb.New(to)}})
	return err
}

// got is one delivery as the Go client saw it.
type got struct {
	ID, Data    string
	Attrs       map[string]string
	PublishTime time.Time
	Attempt     int // 0: no delivery_attempt
	At          time.Time
}

// receive runs a streaming pull on sub until want messages arrived, then
// `extra` longer to catch anything unexpected, at most `limit` in all.
// handle decides ack (true) or nack for each.
func (x *fixture) receive(t *testing.T, sub string, want int, extra, limit time.Duration, handle func(got) bool) []got {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	var mu sync.Mutex
	var out []got
	var enough sync.Once
	s := x.client.Subscriber(sub)
	s.ReceiveSettings.MaxExtension = -1 // no lease extension: the emulator decides
	err := s.Receive(ctx, func(_ context.Context, m *pubsub.Message) {
		g := got{ID: m.ID, Data: string(m.Data), Attrs: m.Attributes, PublishTime: m.PublishTime, At: time.Now()}
		if m.DeliveryAttempt != nil {
			g.Attempt = *m.DeliveryAttempt
		}
		mu.Lock()
		out = append(out, g)
		n := len(out)
		mu.Unlock()
		if handle == nil || handle(g) {
			m.Ack()
		} else {
			m.Nack()
		}
		if n >= want {
			enough.Do(func() { time.AfterFunc(extra, cancel) })
		}
	})
	if err != nil && ctx.Err() == nil {
		t.Fatalf("receive %s: %v", sub, err)
	}
	mu.Lock()
	defer mu.Unlock()
	return append([]got(nil), out...)
}

func byData(gs []got) []got {
	sort.Slice(gs, func(i, j int) bool { return gs[i].Data < gs[j].Data })
	return gs
}

// TestSeekReplay: the Python check of the brief, with the Go client. Three
// messages received and acked; a Seek to before the first delivers all three
// again (same id, data, attributes, publish time) to that subscription only; a
// Seek to between the 2nd and 3rd delivers the 3rd; a Seek to now purges.
func TestSeekReplay(t *testing.T) {
	t.Parallel()
	x := newFixture(t)
	topic := x.topic(t, "jobs")
	worker := x.subscription(t, &pb.Subscription{Name: subName("jobs-worker"), Topic: topic, AckDeadlineSeconds: 60,
		RetainAckedMessages: true, MessageRetentionDuration: durationpb.New(7 * 24 * time.Hour)}).Name
	other := x.subscription(t, &pb.Subscription{Name: subName("jobs-audit"), Topic: topic}).Name

	before := time.Now()
	for i := range 3 {
		x.publish(t, topic, fmt.Sprintf(`{"job_id": "job-%d"}`, i), map[string]string{"n": strconv.Itoa(i), "replay": ""})
		time.Sleep(20 * time.Millisecond)
	}
	first := byData(x.receive(t, worker, 3, 200*time.Millisecond, 10*time.Second, nil))
	if len(first) != 3 {
		t.Fatalf("first delivery: %d messages, want 3: %+v", len(first), first)
	}
	if n := len(x.receive(t, other, 3, 100*time.Millisecond, 10*time.Second, nil)); n != 3 {
		t.Fatalf("other subscription got %d, want 3", n)
	}

	same := func(t *testing.T, a, b got) {
		t.Helper()
		if a.ID != b.ID || a.Data != b.Data || !maps.Equal(a.Attrs, b.Attrs) || !a.PublishTime.Equal(b.PublishTime) {
			t.Errorf("replayed %+v, original %+v", b, a)
		}
	}

	if err := x.seek(t, worker, before.Add(-time.Second)); err != nil {
		t.Fatalf("seek to the past: %v", err)
	}
	again := byData(x.receive(t, worker, 3, 300*time.Millisecond, 10*time.Second, nil))
	if len(again) != 3 {
		t.Fatalf("after seek: %d messages, want 3: %+v", len(again), again)
	}
	for i := range first {
		same(t, first[i], again[i])
	}
	if extra := x.receive(t, other, 1, 0, 500*time.Millisecond, nil); len(extra) != 0 {
		t.Errorf("the replay reached another subscription: %+v", extra)
	}

	mid := first[1].PublishTime.Add(first[2].PublishTime.Sub(first[1].PublishTime) / 2)
	if err := x.seek(t, worker, mid); err != nil {
		t.Fatal(err)
	}
	only := x.receive(t, worker, 1, 500*time.Millisecond, 10*time.Second, nil)
	if len(only) != 1 {
		t.Fatalf("seek between 2nd and 3rd: %+v, want only the 3rd", only)
	}
	same(t, first[2], only[0])

	// A replay left unacked is purged by a Seek to now, like any backlog.
	if err := x.seek(t, worker, before.Add(-time.Second)); err != nil {
		t.Fatal(err)
	}
	if err := x.seek(t, worker, time.Now()); err != nil {
		t.Fatal(err)
	}
	if left := x.receive(t, worker, 1, 0, 500*time.Millisecond, nil); len(left) != 0 {
		t.Errorf("seek to now left %+v", left)
	}

	// A Seek replays again and again; the server stays up throughout.
	if err := x.seek(t, worker, before); err != nil {
		t.Fatal(err)
	}
	if n := len(x.receive(t, worker, 3, 300*time.Millisecond, 10*time.Second, nil)); n != 3 {
		t.Errorf("second replay: %d messages, want 3", n)
	}
	if _, err := x.pub.GetTopic(context.Background(), &pb.GetTopicRequest{Topic: topic}); err != nil {
		t.Fatalf("server gone: %v", err)
	}
}

// TestSeekRetention: what a Seek replays is bounded by the subscription's
// retention (with retain_acked_messages) and creation, or by the topic's
// retention.
func TestSeekRetention(t *testing.T) {
	t.Parallel()
	x := newFixture(t)
	now := time.Now()
	topic := x.topic(t, "jobs")
	if _, err := x.pub.CreateTopic(context.Background(), &pb.Topic{Name: topicName("kept"), MessageRetentionDuration: durationpb.New(10 * 24 * time.Hour)}); err != nil {
		t.Fatal(err)
	}
	kept := topicName("kept")

	// A subscription "created" nine days ago, one created now, one without
	// retained acks on the topic with retention.
	x.f.now = func() time.Time { return now.Add(-9 * 24 * time.Hour) }
	old := x.subscription(t, &pb.Subscription{Name: subName("old"), Topic: topic, RetainAckedMessages: true}).Name
	x.f.now = time.Now
	fresh := x.subscription(t, &pb.Subscription{Name: subName("fresh"), Topic: topic, RetainAckedMessages: true}).Name
	byTopic := x.subscription(t, &pb.Subscription{Name: subName("by-topic"), Topic: kept}).Name

	at := func(d time.Duration) { x.f.ps.SetTimeNowFunc(func() time.Time { return now.Add(d) }) }
	for _, tp := range []string{topic, kept} {
		at(-8 * 24 * time.Hour)
		x.publish(t, tp, "eight days ago", nil)
		at(-time.Hour)
		x.publish(t, tp, "an hour ago", nil)
		x.f.ps.SetTimeNowFunc(time.Now)
		x.publish(t, tp, "now", nil)
	}

	for _, c := range []struct {
		sub  string
		want []string
	}{
		{old, []string{"an hour ago", "now"}},                       // 7 days of retention
		{fresh, []string{"now"}},                                    // nothing from before it existed
		{byTopic, []string{"an hour ago", "eight days ago", "now"}}, // topic retention: 10 days
	} {
		if err := x.seek(t, c.sub, now.Add(-30*24*time.Hour)); err != nil {
			t.Fatalf("seek %s: %v", c.sub, err)
		}
		gs := byData(x.receive(t, c.sub, len(c.want), 300*time.Millisecond, 10*time.Second, nil))
		var data []string
		for _, g := range gs {
			data = append(data, g.Data)
		}
		if fmt.Sprint(data) != fmt.Sprint(c.want) {
			t.Errorf("%s replayed %q, want %q", c.sub, data, c.want)
		}
	}
}

// TestSeekEdges: errors and purges.
func TestSeekEdges(t *testing.T) {
	t.Parallel()
	x := newFixture(t)
	ctx := context.Background()
	topic := x.topic(t, "jobs")
	plain := x.subscription(t, &pb.Subscription{Name: subName("plain"), Topic: topic}).Name

	x.publish(t, topic, "one", nil)
	err := x.seek(t, plain, time.Now().Add(-time.Hour))
	if status.Code(err) != codes.FailedPrecondition {
		t.Errorf("past seek without retained acks: %v, want FailedPrecondition", err)
	}
	if err := x.seek(t, plain, time.Now()); err != nil {
		t.Errorf("seek to now without retained acks: %v", err)
	}
	if err := x.seek(t, plain, time.Now().Add(time.Hour)); err != nil {
		t.Errorf("seek to the future: %v", err)
	}
	x.publish(t, topic, "two", nil)
	if gs := x.receive(t, plain, 1, 300*time.Millisecond, 5*time.Second, nil); len(gs) != 1 || gs[0].Data != "two" {
		t.Errorf("after purges got %+v, want only the later message", gs)
	}
	if err := x.seek(t, subName("nope"), time.Now()); status.Code(err) != codes.NotFound {
		t.Errorf("unknown subscription: %v", err)
	}
	_, err = x.sub.Seek(ctx, &pb.SeekRequest{Subscription: plain, Target: &pb.SeekRequest_Snapshot{Snapshot: "projects/p/snapshots/s"}})
	if status.Code(err) != codes.Unimplemented {
		t.Errorf("snapshot seek: %v", err)
	}
	_, err = x.sub.Seek(ctx, &pb.SeekRequest{Subscription: plain})
	if status.Code(err) != codes.InvalidArgument {
		t.Errorf("seek without target: %v", err)
	}
	_, err = x.pub.Publish(ctx, &pb.PublishRequest{Topic: topic, Messages: []*pb.PubsubMessage{{Data: []byte("x"), Attributes: map[string]string{attrReplayFor: plain}}}})
	if status.Code(err) != codes.InvalidArgument {
		t.Errorf("reserved attribute accepted: %v", err)
	}
}

// TestRetryBackoffAndDeadLetter: a worker that nacks every time sees delivery
// attempts 1..5 spaced by the retry policy (200, 400, 500, 500 ms), then the
// dead-letter subscription gets the message once, with Pub/Sub's attributes.
func TestRetryBackoffAndDeadLetter(t *testing.T) {
	t.Parallel()
	x := newFixture(t)
	topic, dead := x.topic(t, "jobs"), x.topic(t, "jobs-dead")
	worker := x.subscription(t, &pb.Subscription{Name: subName("jobs-worker"), Topic: topic, AckDeadlineSeconds: 60,
		RetryPolicy:      &pb.RetryPolicy{MinimumBackoff: durationpb.New(200 * time.Millisecond), MaximumBackoff: durationpb.New(500 * time.Millisecond)},
		DeadLetterPolicy: &pb.DeadLetterPolicy{DeadLetterTopic: dead, MaxDeliveryAttempts: 5}})
	if worker.DeadLetterPolicy.GetMaxDeliveryAttempts() != 5 || worker.RetryPolicy == nil {
		t.Errorf("created %v", worker)
	}
	deadSub := x.subscription(t, &pb.Subscription{Name: subName("jobs-dead-worker"), Topic: dead}).Name

	x.publish(t, topic, "good", map[string]string{"k": "g"})
	x.publish(t, topic, "poison", map[string]string{"k": "p"})
	var poison []got
	var good int
	x.receive(t, worker.Name, 6, 1500*time.Millisecond, 20*time.Second, func(g got) bool {
		if g.Data == "good" {
			good++
			return true
		}
		poison = append(poison, g)
		return false
	})
	if good != 1 {
		t.Errorf("good message delivered %d times", good)
	}
	if len(poison) != 5 {
		t.Fatalf("poison delivered %d times, want 5: %+v", len(poison), poison)
	}
	waits := []time.Duration{200, 400, 500, 500}
	for i, g := range poison {
		if g.Attempt != i+1 {
			t.Errorf("delivery %d: delivery_attempt %d", i+1, g.Attempt)
		}
		if i > 0 {
			gap, min := g.At.Sub(poison[i-1].At), waits[i-1]*time.Millisecond
			if gap < min || gap > min+time.Second {
				t.Errorf("attempt %d came %v after attempt %d, want about %v", i+1, gap, i, min)
			}
		}
	}
	dl := x.receive(t, deadSub, 1, time.Second, 5*time.Second, nil)
	if len(dl) != 1 {
		t.Fatalf("dead-letter subscription got %d messages, want 1: %+v", len(dl), dl)
	}
	d := dl[0]
	want := map[string]string{
		"k": "p",
		"CloudPubSubDeadLetterSourceDeliveryCount":       "5",
		"CloudPubSubDeadLetterSourceSubscription":        "jobs-worker",
		"CloudPubSubDeadLetterSourceSubscriptionProject": project,
		"CloudPubSubDeadLetterSourceTopicPublishTime":    poison[0].PublishTime.UTC().Format("2006-01-02T15:04:05.000-07:00"),
	}
	if d.Data != "poison" || !maps.Equal(d.Attrs, want) || d.Attempt != 0 || d.ID == poison[0].ID {
		t.Errorf("dead letter %+v, want data poison, attributes %v, a new id and no delivery_attempt", d, want)
	}
	if again := x.receive(t, worker.Name, 1, 0, 700*time.Millisecond, nil); len(again) != 0 {
		t.Errorf("dead-lettered message still delivered: %+v", again)
	}
}

// TestLeaseExpiryCountsAndBacksOff: a message whose lease runs out (the worker
// died) comes back after its ack deadline plus the backoff, counted as an
// attempt; at the limit it goes to the dead-letter topic. Raw Pull with a 1 s
// ack deadline.
func TestLeaseExpiryCountsAndBacksOff(t *testing.T) {
	t.Parallel()
	x := newFixture(t)
	ctx := context.Background()
	topic, dead := x.topic(t, "jobs"), x.topic(t, "jobs-dead")
	sub := x.subscription(t, &pb.Subscription{Name: subName("w"), Topic: topic, AckDeadlineSeconds: 1,
		RetryPolicy:      &pb.RetryPolicy{MinimumBackoff: durationpb.New(300 * time.Millisecond), MaximumBackoff: durationpb.New(300 * time.Millisecond)},
		DeadLetterPolicy: &pb.DeadLetterPolicy{DeadLetterTopic: dead}}).Name
	deadSub := x.subscription(t, &pb.Subscription{Name: subName("d"), Topic: dead}).Name
	x.publish(t, topic, "job", nil)

	pull := func(name string) (*pb.ReceivedMessage, time.Time) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for time.Now().Before(deadline) {
			res, err := x.sub.Pull(ctx, &pb.PullRequest{Subscription: name, MaxMessages: 10})
			if err != nil {
				t.Fatal(err)
			}
			if len(res.ReceivedMessages) > 1 {
				t.Fatalf("pulled %d messages", len(res.ReceivedMessages))
			}
			if len(res.ReceivedMessages) == 1 {
				return res.ReceivedMessages[0], time.Now()
			}
		}
		t.Fatalf("nothing pulled from %s", name)
		return nil, time.Time{}
	}
	var last time.Time
	for attempt := 1; attempt <= 5; attempt++ {
		rm, at := pull(sub)
		if int(rm.DeliveryAttempt) != attempt || string(rm.Message.Data) != "job" {
			t.Fatalf("delivery %d: attempt %d data %q", attempt, rm.DeliveryAttempt, rm.Message.Data)
		}
		if attempt > 1 {
			if gap := at.Sub(last); gap < 1300*time.Millisecond {
				t.Errorf("attempt %d only %v after the previous (ack deadline 1 s + backoff 300 ms)", attempt, gap)
			}
		}
		last = at
		if attempt == 3 {
			// A nack in between: backoff without the ack deadline.
			if _, err := x.sub.ModifyAckDeadline(ctx, &pb.ModifyAckDeadlineRequest{Subscription: sub, AckIds: []string{rm.AckId}}); err != nil {
				t.Fatal(err)
			}
			last = last.Add(-time.Second)
		}
	}
	// The emulator acts when pstest hands the message out again, so someone
	// must pull: a worker's streaming pull does, here a Pull that gets nothing.
	time.Sleep(1100 * time.Millisecond)
	if res, err := x.sub.Pull(ctx, &pb.PullRequest{Subscription: sub, MaxMessages: 10, ReturnImmediately: true}); err != nil || len(res.ReceivedMessages) != 0 {
		t.Fatalf("after the last attempt: %v %v", res, err)
	}
	rm, _ := pull(deadSub)
	if string(rm.Message.Data) != "job" || rm.Message.Attributes["CloudPubSubDeadLetterSourceDeliveryCount"] != "5" {
		t.Errorf("dead letter %v", rm)
	}
	if _, err := x.sub.Acknowledge(ctx, &pb.AcknowledgeRequest{Subscription: deadSub, AckIds: []string{rm.AckId}}); err != nil {
		t.Fatal(err)
	}
	res, err := x.sub.Pull(ctx, &pb.PullRequest{Subscription: deadSub, MaxMessages: 10})
	if err != nil || len(res.ReceivedMessages) != 0 {
		t.Errorf("dead-letter topic got more: %v %v", res, err)
	}
}

// TestStreamNack: a nack sent on the StreamingPull stream itself (not as a
// ModifyAckDeadline call) is backed off too; an ack on the stream sticks.
func TestStreamNack(t *testing.T) {
	t.Parallel()
	x := newFixture(t)
	topic := x.topic(t, "jobs")
	sub := x.subscription(t, &pb.Subscription{Name: subName("w"), Topic: topic,
		RetryPolicy: &pb.RetryPolicy{MinimumBackoff: durationpb.New(400 * time.Millisecond)}}).Name
	x.publish(t, topic, "job", nil)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := x.sub.StreamingPull(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Send(&pb.StreamingPullRequest{Subscription: sub, StreamAckDeadlineSeconds: 30}); err != nil {
		t.Fatal(err)
	}
	recv := func() (*pb.ReceivedMessage, time.Time) {
		t.Helper()
		for {
			res, err := st.Recv()
			if err != nil {
				t.Fatal(err)
			}
			if len(res.ReceivedMessages) > 0 {
				return res.ReceivedMessages[0], time.Now()
			}
		}
	}
	rm, t1 := recv()
	if err := st.Send(&pb.StreamingPullRequest{ModifyDeadlineAckIds: []string{rm.AckId}, ModifyDeadlineSeconds: []int32{0}}); err != nil {
		t.Fatal(err)
	}
	rm, t2 := recv()
	if gap := t2.Sub(t1); gap < 400*time.Millisecond {
		t.Errorf("redelivered %v after a stream nack, want >= 400ms", gap)
	}
	if rm.DeliveryAttempt != 0 {
		t.Errorf("delivery_attempt %d without a dead-letter policy", rm.DeliveryAttempt)
	}
	if err := st.Send(&pb.StreamingPullRequest{AckIds: []string{rm.AckId}}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond)
	if err := x.seek(t, sub, time.Now().Add(time.Hour)); err != nil { // purge; nothing should be left anyway
		t.Fatal(err)
	}
}

// TestPolicyUpdates: the dead-letter policy the front keeps reads back,
// validates and updates like Pub/Sub's.
func TestPolicyUpdates(t *testing.T) {
	t.Parallel()
	x := newFixture(t)
	ctx := context.Background()
	topic, dead := x.topic(t, "jobs"), x.topic(t, "jobs-dead")

	_, err := x.sub.CreateSubscription(ctx, &pb.Subscription{Name: subName("bad"), Topic: topic,
		DeadLetterPolicy: &pb.DeadLetterPolicy{DeadLetterTopic: dead, MaxDeliveryAttempts: 3}})
	if status.Code(err) != codes.InvalidArgument {
		t.Errorf("max_delivery_attempts 3: %v", err)
	}
	_, err = x.sub.CreateSubscription(ctx, &pb.Subscription{Name: subName("bad"), Topic: topic,
		DeadLetterPolicy: &pb.DeadLetterPolicy{DeadLetterTopic: topicName("missing")}})
	if status.Code(err) != codes.NotFound {
		t.Errorf("missing dead-letter topic: %v", err)
	}
	_, err = x.sub.CreateSubscription(ctx, &pb.Subscription{Name: subName("bad"), Topic: topic,
		RetryPolicy: &pb.RetryPolicy{MinimumBackoff: durationpb.New(11 * time.Minute)}})
	if status.Code(err) != codes.InvalidArgument {
		t.Errorf("backoff over 600 s: %v", err)
	}

	name := x.subscription(t, &pb.Subscription{Name: subName("w"), Topic: topic}).Name
	upd, err := x.sub.UpdateSubscription(ctx, &pb.UpdateSubscriptionRequest{
		Subscription: &pb.Subscription{Name: name, DeadLetterPolicy: &pb.DeadLetterPolicy{DeadLetterTopic: dead}, AckDeadlineSeconds: 30},
		UpdateMask:   &fieldmaskpb.FieldMask{Paths: []string{"dead_letter_policy", "ack_deadline_seconds"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	if upd.DeadLetterPolicy.GetMaxDeliveryAttempts() != 5 || upd.AckDeadlineSeconds != 30 {
		t.Errorf("updated %v", upd)
	}
	got, err := x.sub.GetSubscription(ctx, &pb.GetSubscriptionRequest{Subscription: name})
	if err != nil || got.DeadLetterPolicy.GetDeadLetterTopic() != dead {
		t.Errorf("get %v %v", got, err)
	}
	list, err := x.sub.ListSubscriptions(ctx, &pb.ListSubscriptionsRequest{Project: "projects/" + project})
	if err != nil || len(list.Subscriptions) != 1 || list.Subscriptions[0].DeadLetterPolicy == nil {
		t.Errorf("list %v %v", list, err)
	}
	if _, err := x.pub.DeleteTopic(ctx, &pb.DeleteTopicRequest{Topic: dead}); status.Code(err) != codes.FailedPrecondition {
		t.Errorf("deleting a dead-letter topic in use: %v", err)
	}
	if _, err := x.sub.UpdateSubscription(ctx, &pb.UpdateSubscriptionRequest{Subscription: &pb.Subscription{Name: name}}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("update without a mask: %v", err)
	}
	upd, err = x.sub.UpdateSubscription(ctx, &pb.UpdateSubscriptionRequest{
		Subscription: &pb.Subscription{Name: name},
		UpdateMask:   &fieldmaskpb.FieldMask{Paths: []string{"dead_letter_policy"}},
	})
	if err != nil || upd.DeadLetterPolicy != nil {
		t.Errorf("removing the policy: %v %v", upd, err)
	}
	if _, err := x.pub.DeleteTopic(ctx, &pb.DeleteTopicRequest{Topic: dead}); err != nil {
		t.Errorf("deleting the dead-letter topic once unused: %v", err)
	}
	if _, err := x.sub.DeleteSubscription(ctx, &pb.DeleteSubscriptionRequest{Subscription: name}); err != nil {
		t.Fatal(err)
	}
	if _, err := x.sub.GetSubscription(ctx, &pb.GetSubscriptionRequest{Subscription: name}); status.Code(err) != codes.NotFound {
		t.Errorf("deleted subscription: %v", err)
	}
}

func TestBackoff(t *testing.T) {
	rp := &pb.RetryPolicy{MinimumBackoff: durationpb.New(10 * time.Second), MaximumBackoff: durationpb.New(60 * time.Second)}
	for attempts, want := range map[int]time.Duration{1: 10 * time.Second, 2: 20 * time.Second, 3: 40 * time.Second, 4: 60 * time.Second, 9: 60 * time.Second} {
		if got := backoff(rp, attempts); got != want {
			t.Errorf("backoff after %d attempts: %v, want %v", attempts, got, want)
		}
	}
	if got := backoff(nil, 3); got != 0 {
		t.Errorf("no policy: %v", got)
	}
	if got := backoff(&pb.RetryPolicy{}, 1); got != defaultMinBackoff {
		t.Errorf("empty policy: %v, want the 10 s default", got)
	}
	if got := backoff(&pb.RetryPolicy{MinimumBackoff: durationpb.New(0)}, 4); got != 0 {
		t.Errorf("zero minimum: %v", got)
	}
}

// TestOldRetryIsRepublished: pstest drops a message that becomes available
// 10 minutes after its publish; a retry released that late is delivered as a
// copy that looks like the original and keeps counting attempts. On a
// subscription without policies pstest's limit stands.
func TestOldRetryIsRepublished(t *testing.T) {
	t.Parallel()
	x := newFixture(t)
	ctx := context.Background()
	topic, dead := x.topic(t, "jobs"), x.topic(t, "jobs-dead")
	managed := x.subscription(t, &pb.Subscription{Name: subName("managed"), Topic: topic, AckDeadlineSeconds: 60,
		RetryPolicy:      &pb.RetryPolicy{MinimumBackoff: durationpb.New(300 * time.Millisecond), MaximumBackoff: durationpb.New(300 * time.Millisecond)},
		DeadLetterPolicy: &pb.DeadLetterPolicy{DeadLetterTopic: dead}}).Name
	plain := x.subscription(t, &pb.Subscription{Name: subName("plain"), Topic: topic, AckDeadlineSeconds: 60}).Name

	published := time.Now().Add(-pstestKeeps + 2*time.Second)
	x.f.ps.SetTimeNowFunc(func() time.Time { return published })
	id := x.publish(t, topic, "old job", map[string]string{"k": "v"})
	x.f.ps.SetTimeNowFunc(time.Now)

	pull := func(sub string, within time.Duration) *pb.ReceivedMessage {
		t.Helper()
		deadline := time.Now().Add(within)
		for time.Now().Before(deadline) {
			res, err := x.sub.Pull(ctx, &pb.PullRequest{Subscription: sub, MaxMessages: 10})
			if err != nil {
				t.Fatal(err)
			}
			if len(res.ReceivedMessages) > 0 {
				return res.ReceivedMessages[0]
			}
		}
		return nil
	}
	nack := func(sub, ackID string) {
		t.Helper()
		if _, err := x.sub.ModifyAckDeadline(ctx, &pb.ModifyAckDeadlineRequest{Subscription: sub, AckIds: []string{ackID}}); err != nil {
			t.Fatal(err)
		}
	}
	m1, p1 := pull(managed, 5*time.Second), pull(plain, 5*time.Second)
	if m1 == nil || p1 == nil {
		t.Fatal("first delivery missing")
	}
	time.Sleep(2500 * time.Millisecond) // now more than 10 minutes after the publish
	nack(managed, m1.AckId)
	nack(plain, p1.AckId)

	m2 := pull(managed, 5*time.Second)
	if m2 == nil {
		t.Fatal("the retry of an old message was lost")
	}
	if m2.Message.MessageId != id || string(m2.Message.Data) != "old job" || !maps.Equal(m2.Message.Attributes, map[string]string{"k": "v"}) ||
		!m2.Message.PublishTime.AsTime().Equal(m1.Message.PublishTime.AsTime()) || m2.DeliveryAttempt != 2 {
		t.Errorf("retry %v, want the original %v as attempt 2", m2, m1)
	}
	nack(managed, m2.AckId)
	m3 := pull(managed, 5*time.Second)
	if m3 == nil || m3.Message.MessageId != id || m3.DeliveryAttempt != 3 {
		t.Fatalf("third attempt %v", m3)
	}
	if _, err := x.sub.Acknowledge(ctx, &pb.AcknowledgeRequest{Subscription: managed, AckIds: []string{m3.AckId}}); err != nil {
		t.Fatal(err)
	}
	if m := pull(managed, time.Second); m != nil {
		t.Errorf("delivered after its ack: %v", m)
	}
	// pstest's own limit, on a subscription the emulator does not manage.
	if p := pull(plain, time.Second); p != nil {
		t.Logf("pstest kept a message nacked 10 minutes after its publish (its limit changed?): %v", p)
	}
}
