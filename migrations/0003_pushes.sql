CREATE TABLE "pushes" (
	"delivery_id" uuid NOT NULL,
	"driver_id" uuid NOT NULL,
	"kind" text NOT NULL,
	"payload" jsonb NOT NULL,
	"created_at" timestamp with time zone DEFAULT now() NOT NULL,
	"last_sent_at" timestamp with time zone,
	"resends" integer DEFAULT 0 NOT NULL,
	"acknowledged_at" timestamp with time zone,
	"closed_at" timestamp with time zone,
	"unacknowledged_at" timestamp with time zone,
	CONSTRAINT "pushes_delivery_id_driver_id_kind_pk" PRIMARY KEY("delivery_id","driver_id","kind")
);
--> statement-breakpoint
ALTER TABLE "deliveries" ADD COLUMN "acknowledged_at" timestamp with time zone;--> statement-breakpoint
CREATE INDEX "pushes_open_idx" ON "pushes" USING btree ("created_at") WHERE "pushes"."acknowledged_at" is null and "pushes"."closed_at" is null;