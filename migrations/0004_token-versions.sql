CREATE TABLE "token_versions" (
	"role" text NOT NULL,
	"subject" text NOT NULL,
	"version" integer DEFAULT 0 NOT NULL,
	"updated_at" timestamp with time zone DEFAULT now() NOT NULL,
	CONSTRAINT "token_versions_role_subject_pk" PRIMARY KEY("role","subject")
);
