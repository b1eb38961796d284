CREATE TABLE "fleets" (
	"id" text PRIMARY KEY NOT NULL,
	"exclusive" boolean DEFAULT false NOT NULL,
	"created_at" timestamp with time zone DEFAULT now() NOT NULL,
	"updated_at" timestamp with time zone DEFAULT now() NOT NULL
);
--> statement-breakpoint
CREATE TABLE "offers" (
	"id" uuid PRIMARY KEY DEFAULT gen_random_uuid() NOT NULL,
	"delivery_id" uuid NOT NULL,
	"driver_id" uuid NOT NULL,
	"attempt" integer NOT NULL,
	"status" text DEFAULT 'OPEN' NOT NULL,
	"reason" text,
	"distance_meters" double precision,
	"score" jsonb,
	"created_at" timestamp with time zone DEFAULT now() NOT NULL,
	"expires_at" timestamp with time zone NOT NULL,
	"answered_at" timestamp with time zone
);
--> statement-breakpoint
ALTER TABLE "drivers" ADD COLUMN "free_since" timestamp with time zone;--> statement-breakpoint
ALTER TABLE "drivers" ADD COLUMN "fleet" text;--> statement-breakpoint
ALTER TABLE "offers" ADD CONSTRAINT "offers_delivery_id_deliveries_id_fk" FOREIGN KEY ("delivery_id") REFERENCES "public"."deliveries"("id") ON DELETE no action ON UPDATE no action;--> statement-breakpoint
ALTER TABLE "offers" ADD CONSTRAINT "offers_driver_id_drivers_id_fk" FOREIGN KEY ("driver_id") REFERENCES "public"."drivers"("id") ON DELETE no action ON UPDATE no action;--> statement-breakpoint
CREATE UNIQUE INDEX "offers_delivery_driver_key" ON "offers" USING btree ("delivery_id","driver_id");--> statement-breakpoint
CREATE UNIQUE INDEX "offers_one_open_per_delivery" ON "offers" USING btree ("delivery_id") WHERE "offers"."status" = 'OPEN';--> statement-breakpoint
CREATE UNIQUE INDEX "offers_one_open_per_driver" ON "offers" USING btree ("driver_id") WHERE "offers"."status" = 'OPEN';--> statement-breakpoint
CREATE INDEX "offers_open_expires_idx" ON "offers" USING btree ("expires_at") WHERE "offers"."status" = 'OPEN';--> statement-breakpoint
ALTER TABLE "drivers" ADD CONSTRAINT "drivers_fleet_fleets_id_fk" FOREIGN KEY ("fleet") REFERENCES "public"."fleets"("id") ON DELETE no action ON UPDATE no action;