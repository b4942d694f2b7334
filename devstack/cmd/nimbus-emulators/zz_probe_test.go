package main

import (
	"context"
	"os"
	"sync"
	"testing"
	"time"

	"cloud.google.com/go/pubsub/v2"
	"cloud.google.com/go/pubsub/v2/apiv1/pubsubpb"
	"cloud.google.com/go/pubsub/v2/pstest"
	"google.golang.org/api/option"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"
)

func TestProbeRaw(t *testing.T) {
	if os.Getenv("PROBE") == "" {
		t.Skip()
	}
	srv := pstest.NewServer()
	defer srv.Close()
	conn, _ := grpc.NewClient(srv.Addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	ctx := context.Background()
	c, err := pubsub.NewClient(ctx, "p", option.WithGRPCConn(conn))
	if err != nil {
		t.Fatal(err)
	}
	ta, sa := c.TopicAdminClient, c.SubscriptionAdminClient
	ta.CreateTopic(ctx, &pubsubpb.Topic{Name: "projects/p/topics/t"})
	ta.CreateTopic(ctx, &pubsubpb.Topic{Name: "projects/p/topics/dl"})
	_, err = sa.CreateSubscription(ctx, &pubsubpb.Subscription{Name: "projects/p/subscriptions/s", Topic: "projects/p/topics/t", AckDeadlineSeconds: 10,
		RetryPolicy:      &pubsubpb.RetryPolicy{MinimumBackoff: durationpb.New(2 * time.Second), MaximumBackoff: durationpb.New(10 * time.Second)},
		DeadLetterPolicy: &pubsubpb.DeadLetterPolicy{DeadLetterTopic: "projects/p/topics/dl", MaxDeliveryAttempts: 5}, RetainAckedMessages: true})
	if err != nil {
		t.Fatal(err)
	}
	sa.CreateSubscription(ctx, &pubsubpb.Subscription{Name: "projects/p/subscriptions/dls", Topic: "projects/p/topics/dl"})
	start := time.Now()
	c.Publisher("t").Publish(ctx, &pubsub.Message{Data: []byte("x"), Attributes: map[string]string{"a": "1"}}).Get(ctx)
	rctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	var mu sync.Mutex
	c.Subscriber("s").Receive(rctx, func(_ context.Context, m *pubsub.Message) {
		mu.Lock()
		defer mu.Unlock()
		t.Logf("+%v delivery attempt %v id %s", time.Since(start).Round(time.Millisecond), *m.DeliveryAttempt, m.ID)
		m.Nack()
	})
	cancel()
	rctx, cancel = context.WithTimeout(ctx, 1*time.Second)
	c.Subscriber("dls").Receive(rctx, func(_ context.Context, m *pubsub.Message) {
		t.Logf("dead letter: %q attrs %v id %s attempt %v", m.Data, m.Attributes, m.ID, m.DeliveryAttempt)
		m.Ack()
	})
	cancel()
	if os.Getenv("PROBE") == "seek" {
		_, err = sa.Seek(ctx, &pubsubpb.SeekRequest{Subscription: "projects/p/subscriptions/s", Target: &pubsubpb.SeekRequest_Time{Time: timestamppb.New(start.Add(-time.Second))}})
		t.Logf("seek: %v", err)
		rctx, cancel = context.WithTimeout(ctx, 1*time.Second)
		c.Subscriber("s").Receive(rctx, func(_ context.Context, m *pubsub.Message) { t.Logf("after seek: %q", m.Data); m.Ack() })
		cancel()
	}
}
