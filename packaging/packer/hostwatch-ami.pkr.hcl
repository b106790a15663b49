# An AMI with the hostwatch agent baked in, whose image is its own baseline:
#
#   packer init . && packer build -var agent_package=hostwatch-agent_0.1.0-1_amd64.deb \
#     -var agent_package_sha256=<its sha256> -var source_ami=ami-... .
#
# The build installs the package (the unit is enabled but skipped until a collector is named),
# removes any identity the build instance may have taken (`hostwatch-agent reset-identity`),
# empties /etc/machine-id so every instance gets its own, and records the image's golden
# manifest last (`hostwatch-agent bake`): at its first boot each instance enrolls as itself and
# reports every watched file that differs from the image as file_changed with origin "bake".
# Configure the collector at launch with install.sh's variables in user-data
# (packaging/cloud-init/), or bake /etc/hostwatch/agent.toml in with `agent_config`.

variable "region" {
  type    = string
  default = "eu-west-1"
}

variable "source_ami" {
  type        = string
  description = "The base image: Debian 12, Ubuntu 22.04 or 24.04 (for an .rpm: RHEL, Amazon Linux 2023)."
}

variable "instance_type" {
  type    = string
  default = "t3.small"
}

variable "ssh_username" {
  type    = string
  default = "admin"
}

variable "agent_package" {
  type        = string
  description = "Path to hostwatch-agent's .deb (or .rpm) on the machine running Packer."
}

variable "agent_package_sha256" {
  type        = string
  description = "Its SHA-256: the build refuses a package that does not match."
}

variable "agent_config" {
  type        = string
  default     = ""
  description = "Optional path to an agent.toml to bake in (mode 0600); without it, user-data configures the agent."
}

source "amazon-ebs" "hostwatch" {
  region        = var.region
  source_ami    = var.source_ami
  instance_type = var.instance_type
  ssh_username  = var.ssh_username
  ami_name      = "hostwatch-agent-{{timestamp}}"

  # IMDSv2 only on the build instance, as on the instances the image will run as.
  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required"
    http_put_response_hop_limit = 1
  }

  tags = {
    "hostwatch:baked" = "true"
  }
}

build {
  sources = ["source.amazon-ebs.hostwatch"]

  provisioner "file" {
    source      = var.agent_package
    destination = "/tmp/hostwatch-agent.pkg"
  }

  provisioner "file" {
    source      = var.agent_config == "" ? "/dev/null" : var.agent_config
    destination = "/tmp/hostwatch-agent.toml"
  }

  provisioner "shell" {
    execute_command = "sudo sh -eu -c '{{ .Vars }} {{ .Path }}'"
    environment_vars = [
      "PACKAGE_SHA256=${var.agent_package_sha256}",
    ]
    inline = [
      "echo \"$PACKAGE_SHA256  /tmp/hostwatch-agent.pkg\" | sha256sum -c -",
      "if command -v dpkg >/dev/null; then mv /tmp/hostwatch-agent.pkg /tmp/hostwatch-agent.deb && dpkg -i /tmp/hostwatch-agent.deb; else mv /tmp/hostwatch-agent.pkg /tmp/hostwatch-agent.rpm && rpm -Uvh /tmp/hostwatch-agent.rpm; fi",
      "if [ -s /tmp/hostwatch-agent.toml ]; then install -m 0600 /tmp/hostwatch-agent.toml /etc/hostwatch/agent.toml; fi",
      "rm -f /tmp/hostwatch-agent.*",
      # The build instance may have run the agent: the image must carry no identity of it.
      "systemctl stop hostwatch-agent.service || true",
      "hostwatch-agent reset-identity",
      # Every instance generates its own machine id at first boot (systemd: an empty file).
      "truncate -s 0 /etc/machine-id",
      "rm -f /var/lib/dbus/machine-id",
      # Last: nothing the build changes after this is part of the image's baseline.
      "hostwatch-agent bake",
    ]
  }
}
