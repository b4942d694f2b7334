package main

import (
	"context"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"cloud.google.com/go/pubsub/v2/apiv1/pubsubpb"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// TestSmoke starts both emulators on free ports and does one round trip with
// each: publish/pull/ack over gRPC, upload/list/download over the GCS JSON API.
func TestSmoke(t *testing.T) {
	root := t.TempDir()
	cfg, err := parseFlags([]string{"--pubsub-port", "0", "--gcs-port", "0", "--gcs-root", root, "--bucket", "nimbus-models, extra", "--bucket", "third"})
	if err != nil {
		t.Fatal(err)
	}
	e, err := start(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := e.Close(ctx); err != nil {
			t.Error(err)
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	t.Run("pubsub", func(t *testing.T) {
		conn, err := grpc.NewClient(e.PubsubAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		pub, sub := pubsubpb.NewPublisherClient(conn), pubsubpb.NewSubscriberClient(conn)
		topic, subName := "projects/nimbus-local/topics/jobs", "projects/nimbus-local/subscriptions/jobs-worker"
		if _, err := pub.CreateTopic(ctx, &pubsubpb.Topic{Name: topic}); err != nil {
			t.Fatal(err)
		}
		if _, err := sub.CreateSubscription(ctx, &pubsubpb.Subscription{Name: subName, Topic: topic, AckDeadlineSeconds: 10}); err != nil {
			t.Fatal(err)
		}
		if _, err := pub.Publish(ctx, &pubsubpb.PublishRequest{Topic: topic, Messages: []*pubsubpb.PubsubMessage{{Data: []byte("job-1")}}}); err != nil {
			t.Fatal(err)
		}
		var got []*pubsubpb.ReceivedMessage
		for len(got) == 0 && ctx.Err() == nil {
			resp, err := sub.Pull(ctx, &pubsubpb.PullRequest{Subscription: subName, MaxMessages: 10})
			if err != nil {
				t.Fatal(err)
			}
			got = resp.ReceivedMessages
		}
		if len(got) != 1 || string(got[0].Message.Data) != "job-1" {
			t.Fatalf("pulled %v", got)
		}
		if _, err := sub.Acknowledge(ctx, &pubsubpb.AcknowledgeRequest{Subscription: subName, AckIds: []string{got[0].AckId}}); err != nil {
			t.Fatal(err)
		}

		// A Seek to the past is refused: the subscription keeps no acked
		// messages. One to the future purges, and the server keeps serving.
		// (pubsub_test.go covers replays.)
		_, err = sub.Seek(ctx, &pubsubpb.SeekRequest{Subscription: subName,
			Target: &pubsubpb.SeekRequest_Time{Time: timestamppb.New(time.Now().Add(-time.Hour))}})
		if status.Code(err) != codes.FailedPrecondition {
			t.Fatalf("seek to the past: %v, want FailedPrecondition", err)
		}
		if _, err := pub.Publish(ctx, &pubsubpb.PublishRequest{Topic: topic, Messages: []*pubsubpb.PubsubMessage{{Data: []byte("job-2")}}}); err != nil {
			t.Fatal(err)
		}
		if _, err := sub.Seek(ctx, &pubsubpb.SeekRequest{Subscription: subName,
			Target: &pubsubpb.SeekRequest_Time{Time: timestamppb.New(time.Now().Add(time.Second))}}); err != nil {
			t.Fatalf("seek to the future: %v", err)
		}
		pullCtx, cancelPull := context.WithTimeout(ctx, 300*time.Millisecond)
		defer cancelPull()
		resp, err := sub.Pull(pullCtx, &pubsubpb.PullRequest{Subscription: subName, MaxMessages: 10})
		if err == nil && len(resp.ReceivedMessages) > 0 {
			t.Errorf("purged message delivered: %v", resp.ReceivedMessages)
		}
		if _, err := pub.GetTopic(ctx, &pubsubpb.GetTopicRequest{Topic: topic}); err != nil {
			t.Fatalf("server gone after seeks: %v", err)
		}
	})

	t.Run("gcs", func(t *testing.T) {
		get := func(url string) string {
			t.Helper()
			resp, err := http.Get(url)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			b, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != 200 {
				t.Fatalf("GET %s: %d %s", url, resp.StatusCode, b)
			}
			return string(b)
		}
		buckets := get(e.GCSURL + "/storage/v1/b")
		for _, b := range []string{"nimbus-models", "extra", "third"} {
			if !strings.Contains(buckets, `"name":"`+b+`"`) {
				t.Errorf("bucket %s missing from %s", b, buckets)
			}
		}
		resp, err := http.Post(e.GCSURL+"/upload/storage/v1/b/nimbus-models/o?uploadType=media&name=models/iris/MLmodel",
			"text/plain", strings.NewReader("flavors: {}\n"))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("upload: %d", resp.StatusCode)
		}
		if list := get(e.GCSURL + "/storage/v1/b/nimbus-models/o?prefix=models/"); !strings.Contains(list, `"name":"models/iris/MLmodel"`) {
			t.Errorf("list: %s", list)
		}
		if body := get(e.GCSURL + "/download/storage/v1/b/nimbus-models/o/models%2Firis%2FMLmodel?alt=media"); body != "flavors: {}\n" {
			t.Errorf("download: %q", body)
		}
	})
}

func TestBucketFlagAndBadBucket(t *testing.T) {
	cfg, err := parseFlags([]string{"--bucket", "a1,,b2 ", "--bucket=c3"})
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(cfg.buckets, "|") != "a1|b2|c3" {
		t.Errorf("buckets %q", cfg.buckets)
	}
	cfg.pubsubPort, cfg.gcsPort, cfg.buckets = 0, 0, []string{"Bad_Name"}
	if _, err := start(cfg); err == nil {
		t.Error("bad bucket name accepted")
	}
}
